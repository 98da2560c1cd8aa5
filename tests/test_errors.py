"""Errors where they belong: what the data or the user caused becomes one line naming the file,
row and field; anything else is a bug and keeps its own type and traceback. One test per rule."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalsuite.tasks.data import process_rows
from evalsuite.errors import DataFormatError
from evalsuite.tasks.fewshot import ScheduledSampler
from evalsuite.tasks import lm_adapter
from evalsuite.tasks.catalogue import load_spec
from evalsuite.tasks.lm_adapter import LoadedTask

HELLASWAG = Path("Rowan__hellaswag") / "default"
ARC = Path("allenai__ai2_arc") / "ARC-Challenge"


def _small_hellaswag(data_dir: Path, root: Path, null_row: int | None = None) -> Path:
    """The first rows of the real HellaSwag splits as parquet, one evaluation field nulled if asked."""
    folder = root / HELLASWAG
    folder.mkdir(parents=True)
    for split, n in (("validation", 12), ("train", 40)):
        rows = pq.read_table(data_dir / HELLASWAG / f"{split}.parquet").slice(0, n).to_pylist()
        if split == "validation" and null_row is not None:
            rows[null_row]["ctx_a"] = None
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}.parquet")
    return folder


def test_a_broken_row_is_one_line_naming_file_row_and_field(data_dir, tmp_path):
    """HellaSwag's own process_docs meets a null field: the row and field are named, in one line."""
    folder = _small_hellaswag(data_dir, tmp_path, null_row=5)
    with pytest.raises(DataFormatError) as caught:
        LoadedTask(load_spec("hellaswag"), tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{folder / 'validation.parquet'} row 5: field 'ctx_a' is null")
    assert "fix or remove the row" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # the one line is the story


def test_the_intact_rows_still_load(data_dir, tmp_path):
    """The same small copy without the broken field is read and rendered (the test above fails for the row)."""
    _small_hellaswag(data_dir, tmp_path)
    prompts = LoadedTask(load_spec("hellaswag"), tmp_path).prompts(2)
    assert len(prompts) == 2 and all(len(p.continuations) == 4 for p in prompts)


def test_a_bug_while_rendering_prompts_keeps_its_type(data_dir, monkeypatch):
    """A programming error in the adapter (the shot schedule not served) is not 'fix the row'."""
    task = LoadedTask(load_spec("arc"), data_dir)
    monkeypatch.setattr(ScheduledSampler, "serving", lambda self, indices: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="outside serving"):
        task.prompts(1)


def test_a_bug_while_building_the_task_keeps_its_type(data_dir, monkeypatch):
    class Broken:
        def __init__(self, config):
            raise RuntimeError("a bug in building the lm-eval task")

    monkeypatch.setattr(lm_adapter, "_task_class", lambda: Broken)
    with pytest.raises(RuntimeError, match="a bug in building"):
        LoadedTask(load_spec("arc"), data_dir)


def test_process_rows_does_not_retry_a_row_error():
    """A per-row function failing on a row fails once, with its own error: no second try through datasets."""
    calls = []

    def strip(row):
        calls.append(row)
        return {"text": row["text"].strip()}

    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'strip'"):
        process_rows(lambda ds: ds.map(strip), [{"text": " a "}, {"text": None}])
    assert len(calls) == 2  # row 0, then row 1 fails; nothing is called again


def test_process_rows_uses_datasets_only_for_what_plain_rows_cannot_do():
    rows = [{"text": "a", "keep": True}, {"text": "b", "keep": False}]
    assert process_rows(lambda ds: ds.map(lambda r: {"text": r["text"].upper()}), rows) == [
        {"text": "A", "keep": True}, {"text": "B", "keep": False}]
    assert process_rows(lambda ds: ds.filter(lambda r: r["keep"]), rows) == [{"text": "a", "keep": True}]
    assert process_rows(lambda ds: ds.select_columns(["text"]) if ds["text"] else ds, rows) == [
        {"text": "a"}, {"text": "b"}]


def test_a_file_that_is_not_data_is_one_line(data_dir, tmp_path):
    """Unreadable input (not JSON) names the file and line, before lm-eval sees anything."""
    folder = tmp_path / ARC
    folder.mkdir(parents=True)
    shutil.copy(data_dir / ARC / "train.jsonl", folder / "train.jsonl")
    (folder / "test.jsonl").write_text('{"id": 1}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"test.jsonl line 2 is not valid JSON"):
        LoadedTask(load_spec("arc"), tmp_path)
