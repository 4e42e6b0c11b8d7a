"""The app as a server: concurrent users each get their own state, uploads are limited, binding is local.

The Gradio app is built in-process (``build_app``, queued as ``launch.py`` does) on a free port with
the built-in model, and driven over HTTP by ``gradio_client``: one ``Client`` per simulated browser,
so each has its own Gradio session (its own ``gr.State``). Events of the canvas carry their data
(the canvas's ``trigger(name, data)``: a selection is its segment ids) as ``event_data``, which the
public ``Client.predict`` cannot send: those calls go through the client's endpoint function
directly (gradio_client internals, pinned with gradio in this environment).
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_helpers import make_test_scene
from scipy import ndimage

pytestmark = [  # gradio's own use of pandas options, not ours
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SESSIONS = 8
MAX_UPLOAD = "1mb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.ui import build_app
    from app.workbench import Workbench
    from m2f_core.predictor import Predictor

    root = tmp_path_factory.mktemp("sessions")
    predictor = Predictor(None, device="cpu", min_size=64, max_size=128)  # the built-in model, small inputs
    wb = Workbench(predictor, root / "corrections", work_dir=root / "work")
    demo = build_app(wb)
    demo.queue(default_concurrency_limit=4)  # as launch.py
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size=MAX_UPLOAD,
                ssr_mode=False, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "wb": wb, "demo": demo, "predictor": predictor, "root": root}
    finally:
        demo.close()


def _fn_index(demo, elem_id: str, event: str) -> int:
    """Index of the event handler wired to component ``elem_id`` (robust to the order of the wiring)."""
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    for i, dep in enumerate(demo.config["dependencies"]):
        if any(ids.get(t[0]) == elem_id and t[1] == event for t in dep["targets"]):
            return i
    raise KeyError(f"no {event} handler on #{elem_id}")


def _inner_point(segment_map: np.ndarray) -> tuple[int, int, int]:
    """(segment id, x, y): the innermost pixel of the largest segment."""
    ids, counts = np.unique(segment_map[segment_map > 0], return_counts=True)
    sid = int(ids[counts.argmax()])
    dist = ndimage.distance_transform_edt(np.pad(segment_map == sid, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return sid, int(x), int(y)


def _expected(server, image: Path) -> dict:
    """The same actions on a local session: what this image's browser must end with."""
    wb = server["wb"]
    s = wb.new_session()
    try:
        wb.open_upload(s, image)
        sid, x, y = _inner_point(s.workspace.session().segment_map)
        wb.click(s, x, y, "Select")
        screen = wb.delete(s)
        assert f"deleted #{sid}" in screen.status
        h, w = s.workspace.session().shape
        return {"sid": sid, "rows": [[v for v in row[1:]] for row in screen.rows], "wh": [w, h],
                "size": f"{image.name} {w}×{h}"}
    finally:
        wb.close_session(s)


def _browser(server, image: Path, expected: dict, barrier: threading.Barrier) -> dict:
    """One user: upload, click a segment, delete it, switch task twice; returns what the page showed."""
    from gradio_client import Client, handle_file

    demo = server["demo"]
    client = Client(server["url"], verbose=False, httpx_kwargs={"timeout": 120})  # a loaded 2-core machine
    upload, pick = _fn_index(demo, "image-input", "upload"), _fn_index(demo, "canvas", "pick")
    delete, task = _fn_index(demo, "delete", "click"), _fn_index(demo, "task", "change")
    barrier.wait(timeout=120)  # every user starts at once
    shown = {"upload": client.predict(handle_file(str(image)), fn_index=upload)}
    select = client.endpoints[pick].make_end_to_end_fn(client.new_helper(pick))
    # a click on the canvas: the browser finds the segment under it and sends the selection's ids
    shown["click"] = select(event_data={"ids": [expected["sid"]]})
    shown["delete"] = client.predict(fn_index=delete)
    shown["instance"] = client.predict("Instance", fn_index=task)
    shown["panoptic"] = client.predict("Panoptic", fn_index=task)
    client.close()
    return shown


def _status(output: tuple) -> str:
    return output[2]  # (canvas payload, table, status, relabel menu, position)


def _rows(output: tuple) -> list[list]:
    return [row[1:] for row in output[1]["data"]]  # without the "selected" mark column


@pytest.mark.slow
def test_eight_concurrent_sessions_keep_their_own_state(server, tmp_path):
    wb = server["wb"]
    images = [make_test_scene(tmp_path / f"user{i}.png", seed=20 + i, size=(72 + 8 * i, 96)) for i in range(SESSIONS)]
    expected = [_expected(server, image) for image in images]
    runs_before = wb.model_runs
    barrier = threading.Barrier(SESSIONS)
    with ThreadPoolExecutor(SESSIONS) as pool:
        futures = [pool.submit(_browser, server, image, exp, barrier) for image, exp in zip(images, expected)]
        shown = [f.result(timeout=600) for f in futures]  # raises if any request failed
    for image, exp, out in zip(images, expected, shown):
        statuses = {step: _status(o) for step, o in out.items()}
        assert not any("⚠️" in st for st in statuses.values()), statuses
        assert statuses["upload"].startswith(f"opened {image.name}")
        assert f"selected #{exp['sid']}" in statuses["click"]
        assert statuses["delete"].startswith(f"deleted #{exp['sid']}")
        for step in ("upload", "click", "delete", "instance", "panoptic"):  # always this user's image
            assert exp["size"] in statuses[step], (step, statuses[step])
        assert "model runs: 1" in statuses["panoptic"] and "Instance" in statuses["instance"]
        canvas = {step: o[0] for step, o in out.items()}  # this user's canvas payloads
        assert "image" in canvas["upload"] and canvas["upload"]["size"] == exp["wh"]
        assert canvas["delete"]["map"]["base"] == canvas["upload"]["map"]["version"]  # a patch of its own map
        assert canvas["instance"]["task"] == "instance" and canvas["instance"]["map"] is None
        assert _rows(out["delete"]) == _rows(out["panoptic"]) == exp["rows"]  # this user's edit, no one else's
        assert exp["sid"] not in [row[0] for row in _rows(out["panoptic"])]
    assert wb.model_runs - runs_before == SESSIONS  # one model run per user, nothing repeated or lost
    assert len({str(exp["rows"]) for exp in expected}) == SESSIONS  # the users' results really differ


def test_uploads_have_a_size_limit(server, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024))
    with big.open("rb") as f:  # the server refuses it, whatever the client does
        r = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("big.png", f, "image/png")},
                       timeout=60)
    assert r.status_code == 413, r.text
    small = tmp_path / "small.png"
    small.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(1000))
    with small.open("rb") as f:
        r = httpx.post(server["url"] + "gradio_api/upload", files={"files": ("small.png", f, "image/png")},
                       timeout=60)
    assert r.status_code == 200, r.text


def test_launch_binds_locally_and_shares_only_when_asked(monkeypatch, tmp_path, capsys):
    import gradio as gr

    from app import launcher as launch

    calls: list[dict] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(launch.signal, "signal", lambda *args: None)  # keep pytest's own SIGTERM handling
    common = ["--no-browser", "--no-examples", "--corrections-dir", str(tmp_path / "c"), "--runs-dir",
              str(tmp_path / "r")]
    assert launch.main(common) == 0, capsys.readouterr().err
    assert launch.main([*common, "--host", "0.0.0.0", "--share", "--max-upload", "5mb"]) == 0, capsys.readouterr().err
    default, opened = calls
    assert default["server_name"] == "127.0.0.1" and default["share"] is False
    assert default["max_file_size"] == "50mb" and default["inbrowser"] is False
    assert opened["server_name"] == "0.0.0.0" and opened["share"] is True and opened["max_file_size"] == "5mb"
