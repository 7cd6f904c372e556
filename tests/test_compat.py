"""Checkpoints that load on both transformers lines: the tokenizer too, not only the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from flatten_hf.checkpoint import save_compressed

from .test_modeling import PYTHON_V4
from .tiny import tiny_model

TOKENIZE = textwrap.dedent("""
    import json, sys
    sys.modules["flatten_hf"] = None  # a user without flatten-hf
    import transformers
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a river."}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    print(json.dumps({"class": type(tokenizer).__name__, "ids": list(ids), "transformers": transformers.__version__,
                      "eos": tokenizer.eos_token}))
""")


@pytest.mark.parametrize("python", [sys.executable, str(PYTHON_V4)], ids=["transformers5", "transformers4.57"])
def test_saved_tokenizer_loads_and_templates_alike_on_both_lines(python, tmp_path):
    from flatten_hf.assets import require_asset

    assert Path(python).exists(), "run `bash scripts/setup.sh` to create .venv-transformers4 (transformers 4.57)"
    tokenizer = AutoTokenizer.from_pretrained(require_asset("smollm2-135m"))
    save_compressed(tiny_model("llama", vocab_size=len(tokenizer)), tmp_path / "ckpt", tokenizer)
    config = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name 4.x knows; 5.x maps it back
    proc = subprocess.run([python, "-c", TOKENIZE, str(tmp_path / "ckpt")], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = tokenizer.apply_chat_template([{"role": "user", "content": "Name a river."}], add_generation_prompt=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert got["ids"] == list(want) and got["eos"] == tokenizer.eos_token
    assert got["transformers"].startswith("4.57" if python == str(PYTHON_V4) else "5.")
    assert got["class"] in ("PreTrainedTokenizerFast", "TokenizersBackend")
