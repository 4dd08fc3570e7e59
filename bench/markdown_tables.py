"""Print the tables of one or more results JSON files (from `coldprompt run` or `evaluate`) as Markdown.

Usage: python bench/markdown_tables.py RESULTS.json [RESULTS.json ...]
"""

from __future__ import annotations

import json
import sys

from coldprompt.evaluation.report import format_report


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        machine = results.get("machine", {})
        print(f"### {results['dataset']['dataset']}\n")
        if results.get("command"):
            print(f"Command: `{results['command']}`  ")
        print(f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}; "
              f"date {machine.get('date')}; split seed {results['split']['seed']} "
              f"({results['split']['train']} / {results['split']['validation']} / {results['split']['test']} users)\n")
        for note in results["dataset"].get("notes", []):
            print(f"- Data note: {note}")
        print()
        print(format_report(results, markdown=True))
        timings = ", ".join(
            f"{name} {summary['fit_seconds']:.1f} s + {summary['evaluate_seconds']:.1f} s"
            for name, summary in results["methods"].items()
        )
        print(f"\nWall time (fit + evaluate): {timings}\n")
        print_llm_details(results)
    return 0


def print_llm_details(results: dict) -> None:
    """Training stages, model selection and paired tests of a `coldprompt run` result, when present."""
    llm = results.get("llm")
    if llm:
        print_training(results, llm)
    print_paired_tests(results)
    if "wall_seconds" in results:
        print(f"\nTotal wall time of the run: {results['wall_seconds']:.0f} s\n")


def print_training(results: dict, llm: dict) -> None:
    print(f"Backbone {llm['backbone']['identity']} (sha256 {llm['backbone']['sha256'][:12]}...), "
          f"{llm['trainable_parameters']:,} trainable parameters against {llm['backbone_parameters']:,} frozen; "
          f"meta-learner chosen on validation users: **{llm['best_algorithm_on_validation']}** "
          f"(validation NDCG@10 " + ", ".join(f"{a} {v:.4f}" for a, v in llm["validation_ndcg@10"].items()) + ")\n")
    print("| stage | outer steps | users seen | seconds | users/s | best validation NDCG@10 (step) |")
    print("|---|---|---|---|---|---|")
    for name, log in results["training"].items():
        print(f"| {name} | {log['outer_steps']} | {log['users_seen']} | {log['seconds']:.0f} | "
              f"{log['users_per_second']:.1f} | {log['best_validation_ndcg@10']:.4f} ({log['best_step']}) |")


def print_paired_tests(results: dict) -> None:
    tests = [t for t in results.get("paired_tests", []) if not t.get("against_best_baseline")]
    best = [t for t in results.get("paired_tests", []) if t.get("against_best_baseline")]
    if best:
        print(f"\n{best[0]['a']} (chosen on validation users) against the strongest baseline at each K (the one with "
              "the highest test NDCG@10, a choice that can only favour the baseline):\n")
        print("| K | coldprompt | strongest baseline | its NDCG@10 | difference [95% interval] | p (paired bootstrap) | p (Wilcoxon) | verdict |")
        print("|---|---|---|---|---|---|---|---|")
        for test in best:
            diff = test["difference"]
            significant = test["p_paired_bootstrap"] < 0.05 and test["p_wilcoxon"] < 0.05
            if not significant:
                verdict = "no significant difference"
            elif diff["mean"] > 0:
                verdict = "coldprompt better"
            else:
                verdict = "baseline better"
            print(f"| {test['k']} | {test['mean_a']:.4f} | {test['b']} | {test['mean_b']:.4f} | {diff['mean']:+.4f} "
                  f"[{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}] | {test['p_paired_bootstrap']:.3g} | "
                  f"{test['p_wilcoxon']:.3g} | {verdict} |")
    if tests:
        print(f"\nPaired tests on the same {tests[0]['users']} test users, NDCG@10, "
              f"{tests[0]['a']} minus the other method (95% bootstrap interval of the mean difference):\n")
        print("| other method | K | difference | interval | p (paired bootstrap) | p (Wilcoxon) |")
        print("|---|---|---|---|---|---|")
        for test in tests:
            diff = test["difference"]
            print(f"| {test['b']} | {test['k']} | {diff['mean']:+.4f} | [{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}] | "
                  f"{test['p_paired_bootstrap']:.3g} | {test['p_wilcoxon']:.3g} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
