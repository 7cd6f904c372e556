"""What every benchmark does with a measured row: print it at once (a long run shows progress, and a run cut
off still has its rows on screen) and append it to a JSON-lines file, so a table can be re-rendered or a run
resumed from the rows already measured."""

from __future__ import annotations

import json


def emit_row(row: dict, json_path: str | None) -> None:
    """Print `row` as one JSON line and, when `json_path` is given, append it there."""
    print(json.dumps(row), flush=True)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(row) + "\n")
