"""Relation-making edits of real photographs, and the teacher term that keeps plain photographs apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import TINY_MODEL, make_scene_set

from relsearch.corpus import photo_edits
from relsearch.corpus.captions import TEMPLATES
from relsearch.errors import RelsearchError
from relsearch.train.loss import teacher_similarity_loss
from relsearch.train.trainer import TrainConfig, family_ids, train


def _photo(seed: int, w: int = 320, h: int = 240) -> Image.Image:
    """A photograph-like picture: smooth colour fields with texture (no relation of its own)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack([np.sin(xx * rng.uniform(2, 9) + c) * 80 + 128 + yy * rng.uniform(-60, 60) for c in range(3)], -1)
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _thing() -> Image.Image:
    im = Image.new("RGBA", (60, 90), (0, 0, 0, 0))
    im.paste((200, 40, 40, 255), (10, 10, 50, 80))
    return im


def _sources(seed: int = 0) -> photo_edits.Sources:
    return photo_edits.Sources(_photo(seed), _photo(seed + 1), _thing())


def test_every_edit_keeps_the_canvas_and_every_family_has_captions() -> None:
    for k in range(12):
        rng = np.random.default_rng(k)
        w, h = photo_edits._canvas_size(rng)
        for family, edit in photo_edits.EDITS.items():
            im = edit(_sources(k), rng, w, h)
            assert im.size == (w, h) and im.mode == "RGB", family
            assert len(TEMPLATES[family]) >= 3


def test_symmetry_and_reflection_show_their_relation_in_the_pixels() -> None:
    rng = np.random.default_rng(3)
    sym = np.asarray(photo_edits.symmetry(_sources(3), rng, 240, 200), np.float32)
    assert np.abs(sym[:, :120] - sym[:, ::-1][:, :120]).mean() < 1.0
    plain = np.asarray(_photo(3, 240, 200), np.float32)
    assert np.abs(plain[:, :120] - plain[:, ::-1][:, :120]).mean() > 20.0

    def best_mirror(im: Image.Image) -> float:
        """Highest correlation of the rows below a horizon with the rows above it, reversed."""
        profile = np.asarray(im, np.float32).mean((1, 2))
        h = len(profile)
        return max(float(np.corrcoef(profile[2 * y - h : y][::-1], profile[y:])[0, 1]) for y in range(h // 2 + 1, h - 8))

    assert best_mirror(photo_edits.reflection(_sources(4), np.random.default_rng(4), 200, 240)) > 0.9
    assert best_mirror(_photo(4, 200, 240)) < best_mirror(photo_edits.reflection(_sources(4), np.random.default_rng(4), 200, 240))


def test_a_group_is_every_edit_plus_the_plain_photograph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photo_edits, "photo_pool", lambda pool: [_photo(i) for i in range(3)])
    monkeypatch.setattr(photo_edits, "require_photo_things", lambda: [_thing()])
    summary = photo_edits.compose_photo_edits(tmp_path / "a", n_groups=2, n_plain=3, seed=5)
    rows = [json.loads(line) for line in (tmp_path / "a" / "labels.jsonl").read_text().splitlines()]
    assert summary["images"] == len(rows) == 2 * (len(photo_edits.EDITS) + 1) + 3
    assert {r["family"] for r in rows if r.get("group") == "0"} == {*photo_edits.EDITS, photo_edits.PLAIN_FAMILY}
    taught = [r for r in rows if r.get("target") == "teacher"]
    assert len(taught) == 2 + 3 and all(r["family"] == photo_edits.PLAIN_FAMILY for r in taught)
    for r in rows:
        with Image.open(tmp_path / "a" / r["path"]) as im:
            assert im.format == "JPEG"
    photo_edits.compose_photo_edits(tmp_path / "b", n_groups=2, n_plain=3, seed=5)
    assert all((tmp_path / "a" / r["path"]).read_bytes() == (tmp_path / "b" / r["path"]).read_bytes() for r in rows)
    with pytest.raises(RelsearchError, match="groups"):
        photo_edits.compose_photo_edits(tmp_path / "c", n_groups=0)


def test_teacher_loss_is_zero_on_the_teacher_and_pushes_a_collapsed_student_apart() -> None:
    teacher = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    same = torch.nn.functional.normalize(torch.cat([teacher, torch.zeros(8, 4)], 1), dim=1)
    assert float(teacher_similarity_loss(same, teacher)) < 1e-10
    collapsed = torch.nn.functional.normalize(torch.ones(8, 20) + 0.01 * torch.randn(8, 20), dim=1).requires_grad_()
    loss = teacher_similarity_loss(collapsed, teacher)
    assert float(loss.detach()) > 0.3
    loss.backward()
    stepped = torch.nn.functional.normalize(collapsed.detach() - 0.5 * collapsed.grad, dim=1)
    assert float(teacher_similarity_loss(stepped, teacher)) < float(loss)
    assert float(teacher_similarity_loss(collapsed[:1], teacher[:1])) == 0.0


def test_teacher_rows_get_labels_of_their_own(tmp_path: Path) -> None:
    from relsearch.train.data import CaptionRecord

    records = [CaptionRecord("a.jpg", "x", family="mirror"), CaptionRecord("b.jpg", "x", family="mirror"),
               CaptionRecord("c.jpg", "n", family="photo", teacher=True),
               CaptionRecord("d.jpg", "n", family="photo", teacher=True)]
    ids = family_ids(records).tolist()
    assert ids[0] == ids[1] and len({ids[1], ids[2], ids[3]}) == 3


def _with_teacher_rows(data: Path) -> Path:
    rows = [json.loads(line) for line in (data / "labels.jsonl").read_text().splitlines()]
    for r in rows[::4]:
        r["target"], r["family"] = "teacher", "photo"
    out = data / "mixed.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_training_with_teacher_rows_needs_a_weight_and_then_runs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = _with_teacher_rows(make_scene_set(tmp_path / "data", n=16))
    cfg = dict(data=str(data), batch_size=8, lr=3e-3, steps=3, checkpoint_every=3, cache_views=1, progress=False,
               threads=2, family_positives=True, image_loss=0.5, model_args=TINY_MODEL)
    with pytest.raises(RelsearchError, match="--distill"):
        train(TrainConfig(out=str(tmp_path / "no"), **cfg))

    class Teacher:
        def embed(self, images: list) -> np.ndarray:
            return np.stack([np.asarray(im.resize((4, 4)), np.float32).ravel() + 1 for im in images])

    monkeypatch.setattr("relsearch.encoders.get_encoder", lambda spec, device=None: Teacher())
    result = train(TrainConfig(out=str(tmp_path / "yes"), distill=2.0, **cfg))
    assert result.steps == 3 and np.isfinite(result.final_loss)
    assert (tmp_path / "yes" / "teacher_vectors.safetensors").is_file()
