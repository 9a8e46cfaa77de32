"""A batch job's input and output files (DESIGN section 7, "Batch jobs"): JSONL lines parsed into
`BatchItem`s (a bad line becomes an item holding its error, so the job goes on), items grouped into
`Unit`s of questions about the same video, and `OutputFile`, the append-only, resumable JSONL of rows.
"""
from __future__ import annotations

import json
import os
import sys
import zlib
from dataclasses import asdict, dataclass, field, replace

from vxl.checks import int_at_least
from vxl.engine.sampler import SamplingParams

# what a line may hold: the JSON-expressible request fields of DESIGN section 5, plus sampling fields
REQUEST_FIELDS = ("prompt", "prompt_token_ids", "video", "image", "images", "num_frames", "compression_ratio",
                  "request_id")
SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop_token_ids", "ignore_eos")
PATH_FIELDS = ("video", "image")


@dataclass
class JobDefaults:
    """What a line does not say: the CLI's --num-frames, --compression-ratio and sampling flags."""
    num_frames: int | None = None
    compression_ratio: int | None = None
    sampling: dict = field(default_factory=dict)       # SamplingParams fields


@dataclass
class BatchItem:
    """One input line: the engine request and its sampling fields, or the error that makes it a bad line.
    `request_id` is None until `read_items` names a line that gives no usable id of its own."""
    line_no: int
    request_id: str | None
    request: dict = field(default_factory=dict)     # engine request (paths made absolute), no sampling fields
    sampling: dict = field(default_factory=dict)    # every SamplingParams field, already validated
    error: str | None = None

    @property
    def video_key(self) -> tuple | None:
        """(path, num_frames, ratio) when this is a question about a video file that a VideoMemory can
        answer (a text prompt: the memory's prefix is the chat template's), else None."""
        r = self.request
        if self.error is None and isinstance(r.get("video"), str) and isinstance(r.get("prompt"), str):
            return (r["video"], r.get("num_frames"), r.get("compression_ratio"))
        return None

    def params(self) -> SamplingParams:
        return SamplingParams(**self.sampling)


@dataclass
class Unit:
    """Work that runs together: the questions about one video (encoded once when `video_key` is set and
    there are several), or one other request, or one bad line."""
    items: list[BatchItem]
    video_key: tuple | None = None

    def to_json(self) -> str:
        return json.dumps({"items": [asdict(i) for i in self.items], "video_key": self.video_key})

    @classmethod
    def from_json(cls, text: str) -> "Unit":
        d = json.loads(text)
        key = tuple(d["video_key"]) if d["video_key"] is not None else None
        return cls([BatchItem(**i) for i in d["items"]], key)


def error_row(request_id: str, message: str) -> dict:
    return {"request_id": request_id, "text": "", "token_ids": [], "finish_reason": "error", "error": message,
            "metrics": {}}


def output_row(out) -> dict:
    """The output line of a finished `RequestOutput`."""
    return {"request_id": out.request_id, "text": out.text, "token_ids": list(out.token_ids),
            "finish_reason": out.finish_reason, "error": out.error, "metrics": out.metrics}


def default_seed(request_id: str) -> int:
    """A sampled request without a seed gets one from its id, so its answer does not depend on which
    chunk, actor or rerun processed it (LLM.generate would use its position in the call)."""
    return zlib.crc32(request_id.encode("utf-8"))


def _check_request(req: dict, base_dir: str) -> None:
    """Cheap checks that name a bad line's problem before any work; paths become absolute (Ray actors
    may run elsewhere). The engine checks the rest and reports it as the request's error."""
    for name in ("num_frames", "compression_ratio"):
        if req.get(name) is not None:
            int_at_least(name, req[name], 1)
    paths = [(n, req[n]) for n in PATH_FIELDS if req.get(n) is not None]
    if req.get("images") is not None:
        if not isinstance(req["images"], list) or not req["images"]:
            raise ValueError("images must be a non-empty list of file paths")
        paths += [("images", p) for p in req["images"]]
    for name, path in paths:
        if not isinstance(path, str):
            raise ValueError(f"{name} must be a file path (a string), got {type(path).__name__}")
        if not os.path.isfile(os.path.join(base_dir, path)):
            raise ValueError(f"{name} file not found: {path}")
    for name in PATH_FIELDS:
        if req.get(name) is not None:
            req[name] = os.path.abspath(os.path.join(base_dir, req[name]))
    if req.get("images") is not None:
        req["images"] = [os.path.abspath(os.path.join(base_dir, p)) for p in req["images"]]


def parse_line(line: str, line_no: int, defaults: JobDefaults, base_dir: str = "") -> BatchItem:
    """One input line -> a BatchItem; any problem becomes the item's error (a bad line), naming it. A line
    with no usable request_id gets none here (`read_items` names it)."""
    fallback_id = None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return BatchItem(line_no, fallback_id, error=f"line {line_no} is not valid JSON: {e.msg} (column {e.colno})")
    except RecursionError:
        return BatchItem(line_no, fallback_id, error=f"line {line_no} is nested too deeply to be a request")
    if not isinstance(obj, dict):
        return BatchItem(line_no, fallback_id, error=f"line {line_no} is not a JSON object: {type(obj).__name__}")
    rid = obj.get("request_id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        return BatchItem(line_no, fallback_id, error=f"line {line_no}: request_id must be a string or an int")
    rid = str(rid) if rid is not None else None
    unknown = sorted(set(obj) - set(REQUEST_FIELDS) - set(SAMPLING_FIELDS))
    if unknown:
        return BatchItem(line_no, rid, error=f"line {line_no}: unknown field(s) {unknown}; known: "
                                             f"{list(REQUEST_FIELDS + SAMPLING_FIELDS)}")
    req = {k: v for k, v in obj.items() if k in REQUEST_FIELDS}
    req["request_id"] = rid
    if req.get("video") is not None:
        req.setdefault("num_frames", defaults.num_frames)
    if any(req.get(n) is not None for n in ("video", "image", "images")):
        req.setdefault("compression_ratio", defaults.compression_ratio)
    sampling = {**defaults.sampling, **{k: v for k, v in obj.items() if k in SAMPLING_FIELDS}}
    try:
        _check_request(req, base_dir)
        params = SamplingParams(**sampling)
    except (ValueError, TypeError) as exc:
        return BatchItem(line_no, rid, error=f"line {line_no}: {exc}")
    if not params.is_greedy and params.seed is None and rid is not None:
        sampling["seed"] = default_seed(rid)
    return BatchItem(line_no, rid, {k: v for k, v in req.items() if v is not None}, sampling)


def read_items(path: str, defaults: JobDefaults) -> list[BatchItem]:
    """Every non-blank line of the input JSONL as an item. A line without a usable id of its own is named
    `line<n>`, and a request id used twice keeps its first line while the later one becomes an error row
    under such a name; these names avoid every id the file gives (`~` appended until free), so a request
    whose own id is `line3` runs however line 3 looks, and every id still appears once."""
    with open(path, encoding="utf-8", errors="replace") as f:
        items = [parse_line(line, n, defaults) for n, line in enumerate(f, start=1) if line.strip()]
    taken = {item.request_id for item in items if item.request_id is not None}
    first_line, named = {}, []

    def free_name(line_no: int) -> str:
        rid = f"line{line_no}"
        while rid in taken:
            rid += "~"
        taken.add(rid)
        return rid
    for item in items:
        if item.request_id is None:
            name = free_name(item.line_no)
            item = replace(item, request_id=name, request={**item.request, "request_id": name} if item.request else {})
            if not item.error and item.sampling.get("seed") is None:
                item = named_seed(item)
        elif item.request_id in first_line:
            item = BatchItem(item.line_no, free_name(item.line_no), error=f"line {item.line_no}: duplicate request_id "
                             f"{item.request_id!r} (first on line {first_line[item.request_id]})")
        first_line.setdefault(item.request_id, item.line_no)
        named.append(item)
    return named


def named_seed(item: BatchItem) -> BatchItem:
    """A sampled item named by `read_items` gets the seed of its name (see `default_seed`)."""
    if SamplingParams(**item.sampling).is_greedy:
        return item
    return replace(item, sampling={**item.sampling, "seed": default_seed(item.request_id)})


def make_units(items: list[BatchItem], group: bool = True) -> list[Unit]:
    """Questions about the same video (same path, num_frames, ratio) in one unit, placed where the video
    first appears; every other item (and with group=False every item) is a unit of its own."""
    units, by_key = [], {}
    for item in items:
        key = item.video_key if group else None
        if key is None:
            units.append(Unit([item]))
        elif key in by_key:
            by_key[key].items.append(item)
        else:
            by_key[key] = Unit([item], key)
            units.append(by_key[key])
    return units


class OutputFile:
    """The job's output JSONL, append-only. A row is written in one write, flushed and fsync'd, so a
    killed job leaves whole lines only, apart from a trailing partial line if the kill hit mid-write:
    reopening truncates it. `done` holds the request ids already written; `write` skips them, so every
    id appears exactly once however many reruns it takes. An exclusive lock keeps two jobs apart."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.done: set[str] = set()
        self._file = open(path, "a+b")
        try:
            self._lock()
            self._recover()
        except BaseException:
            self._file.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:       # no advisory locks on this platform: one job per output, by convention
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another job is writing {self.path}") from None

    def _recover(self) -> None:
        """Read the ids already done; cut a trailing line without its newline (a torn write)."""
        self._file.seek(0)
        good_end = 0
        for line in self._file:
            if not line.endswith(b"\n"):
                break
            good_end += len(line)
            try:
                self.done.add(str(json.loads(line)["request_id"]))
            except (ValueError, KeyError, TypeError):
                print(f"vxl batch: ignoring an unreadable line in {self.path}", file=sys.stderr)
        self._file.truncate(good_end)
        self._file.seek(0, os.SEEK_END)

    def write(self, row: dict) -> bool:
        """Append `row` unless its id is done; returns whether it was written."""
        if row["request_id"] in self.done:
            return False
        self._file.write((json.dumps(row, default=str) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(row["request_id"])
        return True

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
