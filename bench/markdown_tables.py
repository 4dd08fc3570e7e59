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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
