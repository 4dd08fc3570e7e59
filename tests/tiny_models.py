"""A tiny random Llama with a byte-level BPE tokenizer, saved as a Hugging Face folder, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SENTENCES = [
    "Toy Story (1995), Animation, Children's, Comedy",
    "Jumanji (1995), Adventure, Children's, Fantasy",
    "Heat (1995), Action, Crime, Thriller",
    "Sabrina (1995), Comedy, Romance",
    "the quick brown fox jumps over the lazy dog",
]
HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
INTERMEDIATE_SIZE = 64
VOCAB_SIZE = 300
UNK, BOS, EOS = "<unk>", "<s>", "</s>"


def train_bpe_tokenizer() -> Tokenizer:
    """A byte-level BPE with ids 0, 1, 2 for <unk>, <s>, </s> and 300 tokens in all."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(SENTENCES * 3, trainer)
    return tokenizer


def save_tiny_llama(folder: Path, tokenizer: Tokenizer, max_positions: int = 64, seed: int = 0) -> Path:
    """Save a tiny random tied-head Llama (weights drawn with ``seed``) and ``tokenizer`` (no pad token)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, bos_token=BOS, eos_token=EOS)
    wrapped.save_pretrained(folder)
    return folder
