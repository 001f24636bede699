"""ultralytics never reaches the network through altlas: no DNS probe, download, pip or font fetch.

Each check runs in a fresh interpreter (ultralytics reads its offline switches
once, at import) whose socket layer records and refuses every lookup and
connection. A control run imports ultralytics plainly and must be caught
probing the network, so the guard is known to see what it is meant to see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GUARD = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    def _refuse(what):
        def call(*args, **kwargs):
            attempts.append([what, repr(args[:2])])
            raise OSError("network disabled by test")
        return call
    socket.getaddrinfo = _refuse("getaddrinfo")
    socket.create_connection = _refuse("create_connection")
    socket.socket.connect = _refuse("connect")
    socket.socket.connect_ex = _refuse("connect_ex")
    """
)

SERVE = textwrap.dedent(
    """
    import numpy as np
    from pathlib import Path
    from altlas.models.errors import ModelLoadError
    from altlas.models.registry import ModelRegistry
    from altlas.models.runtime import create_runtime
    from altlas.models.yolo import YoloInput
    root = Path(sys.argv[1])
    entries = [
        {"id": name, "task": task, "backend": "ultralytics", "path": str(root / name),
         "params": {"imgsz": 160}}
        for name, task in [("det-v8.pt", "vision.detect"), ("det-v8.onnx", "vision.detect"),
                           ("seg.pt", "vision.segment"), ("cls.pt", "vision.classify")]
    ]
    entries.append({"id": "absent", "task": "vision.detect", "backend": "ultralytics",
                    "path": str(root / "yolov8n.pt")})
    registry = ModelRegistry.from_dict({"models": entries})
    served = 0
    for entry in entries[:-1]:
        runtime = create_runtime(registry.get(entry["id"]))
        runtime.load()
        out = runtime.predict_batch([YoloInput(np.full((120, 160, 3), 90, np.uint8))] * 2)
        served += len(out)
    try:
        create_runtime(registry.get("absent")).load()
        refused = False
    except ModelLoadError:
        refused = True
    print(json.dumps({"attempts": attempts, "served": served, "refused_missing": refused}))
    """
)


def _run(script: str, home: Path, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "XDG_"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / "cache"))
    proc = subprocess.run(
        [sys.executable, "-c", GUARD + script, *args], capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_plain_ultralytics_import_probes_the_network_and_the_guard_sees_it(tmp_path: Path) -> None:
    result = _run("import ultralytics\nprint(json.dumps({'attempts': attempts}))", tmp_path)
    assert any(call == "getaddrinfo" for call, _ in result["attempts"]), result  # type: ignore[attr-defined]


def test_the_ultralytics_backend_loads_and_predicts_with_no_network_access(
    yolo_dir: Path, tmp_path: Path
) -> None:
    result = _run(SERVE, tmp_path, str(yolo_dir))
    assert result["attempts"] == []
    assert result["served"] == 8
    assert result["refused_missing"] is True
    # ultralytics' settings went where we put them, not into the user's ~/.config.
    assert (tmp_path / "cache" / "altlas" / "ultralytics" / "Ultralytics" / "settings.json").is_file()
    assert not (tmp_path / ".config" / "Ultralytics").exists()
    settings = json.loads(
        (tmp_path / "cache" / "altlas" / "ultralytics" / "Ultralytics" / "settings.json").read_text()
    )
    assert settings["sync"] is False


def test_loading_ultralytics_leaves_safe_image_decoding_intact() -> None:
    from PIL import Image

    from altlas.models.yolo import import_ultralytics
    from altlas.pipelines.image import decode_image
    from altlas.schemas.errors import ErrorCode, InvalidRequestError

    pil_open = Image.open
    import_ultralytics()
    assert Image.open is pil_open  # ultralytics' HEIF-installing wrapper is undone
    with pytest.raises(InvalidRequestError) as caught:
        decode_image(b"GIF89a" + bytes(40), max_pixels=10_000)
    assert caught.value.code is ErrorCode.INVALID_PAYLOAD
