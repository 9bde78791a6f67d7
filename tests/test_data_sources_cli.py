"""`chinchax data build | tokenizer | info` end to end on a small folder of code."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from chinchax.cli import main
from chinchax.data.sources import open_source

tfds.disable_progress_bar()


@pytest.fixture
def code_dir(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:15]:
        (root / p.name).write_bytes(p.read_bytes())
    return root


def test_build_info_and_tokenizer(code_dir, tmp_path, capsys):
    data = str(tmp_path / "data")
    assert main(["data", "build", f"text:{code_dir}", "--data-dir", data]) == 0
    out = capsys.readouterr().out
    assert "documents from 15 files" in out and "manifest sha256 " in out

    assert main(["data", "info", f"text:{code_dir}", "--data-dir", data, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    docs = list(open_source(f"text:{code_dir}", "train", data))
    assert info["documents"] == len(docs)
    assert info["bytes"] == info["tokens"] == sum(len(d.encode()) for d in docs)  # byte tokenizer
    assert info["bytes_per_token"] == 1.0 and info["split"] == "train"

    model = tmp_path / "tok" / "code.model"
    assert main(["data", "tokenizer", f"text:{code_dir}", "--data-dir", data, "--vocab-size", "600",
                 "--out", str(model)]) == 0
    assert model.is_file() and "vocab_size 600" in capsys.readouterr().out
    assert main(["data", "info", f"text:{code_dir}", "--data-dir", data, "--tokenizer", str(model),
                 "--split", "validation", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert val["split"] == "validation" and val["bytes_per_token"] > 1.5 and val["tokens"] < val["bytes"]

    assert main(["data", "info", f"text:{code_dir}", "--data-dir", data, "--max-docs", "2"]) == 0
    table = capsys.readouterr().out
    assert "bytes_per_token" in table and "documents" in table and " 2\n" in table


def test_bad_input_is_reported_without_a_traceback(code_dir, tmp_path, capsys):
    (code_dir / "bad.py").write_bytes(b"x = '\xff'\n")
    assert main(["data", "build", f"text:{code_dir}", "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "bad.py:1" in err and "not valid UTF-8" in err and "Traceback" not in err
    assert main(["data", "info", "tfds:no_such_dataset_xyz", "--data-dir", str(tmp_path / "d")]) == 2
    assert "no such TFDS dataset" in capsys.readouterr().err
    assert main(["data"]) == 2  # no subcommand: help


def test_data_help_is_light():
    code = ("import argparse, sys, chinchax.data.cli as c; c.register(argparse.ArgumentParser().add_subparsers()); "
            "assert 'tensorflow_datasets' not in sys.modules and 'sentencepiece' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failing_text_source_leaves_no_lock_files(code_dir, tmp_path, capsys):
    data = tmp_path / "d"
    (code_dir / "bad.py").write_bytes(b"x = '\xff'\n")
    assert main(["data", "info", f"text:{code_dir}", "--data-dir", str(data)]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
    assert not [p for p in data.rglob("*") if p.name.endswith(".lock")]
    (code_dir / "bad.py").unlink()
    assert main(["data", "info", f"text:{code_dir}", "--data-dir", str(data), "--max-docs", "1"]) == 0
    assert not [p for p in data.rglob("*") if p.name.endswith(".lock")]  # nor does a good build


def test_the_build_lock_still_excludes_while_it_is_removed(tmp_path):
    import threading
    import time

    from chinchax.data.text_builder import _locked

    lock, inside, overlaps = tmp_path / ".x.lock", [], []

    def worker():
        for _ in range(50):
            with _locked(lock):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.0005)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and not lock.exists()
