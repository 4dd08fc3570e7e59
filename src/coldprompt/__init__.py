"""Cold-start recommendation with meta-learned soft prompts on a frozen LLM."""

__version__ = "0.1.0"
