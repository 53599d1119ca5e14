"""Trainer pieces: data readers, losses, schedule, a few real steps, kill and resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from relsearch.errors import RelsearchError
from relsearch.train.data import CaptionRecord, read_caption_jsonl, read_dataset, read_paper_release
from relsearch.train.loss import LossConfig, contrastive_loss, image_label_loss, positive_mask
from relsearch.train.trainer import (
    CACHE_NAME,
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainConfig,
    batch_indices,
    group_units,
    lr_lambda,
    train,
)

TINY_MODEL = {"image_size": 64, "d_model": 32, "n_layers": 1, "n_heads": 2, "lora_rank": 2,
              "pretrained_backbone": True, "dropout": 0.0}
CAPTIONS = {"row": "three squares side by side in a row", "column": "three squares stacked in a column"}


def make_scene_set(root: Path, n: int = 16, seed: int = 0) -> Path:
    """Two toy 'relations' (a row / a column of squares) with captions and labels."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        family = "row" if i % 2 == 0 else "column"
        arr = np.full((56, 56, 3), rng.integers(0, 256, 3), dtype=np.uint8)
        colour = rng.integers(0, 256, 3)
        for j in range(3):
            y, x = (24, 6 + 16 * j) if family == "row" else (6 + 16 * j, 24)
            arr[y : y + 10, x : x + 10] = colour
        path = root / "img" / f"{i:03d}.png"
        Image.fromarray(arr).save(path)
        rows.append({"path": f"img/{i:03d}.png", "caption": CAPTIONS[family], "family": family,
                     "objects": [f"square{i % 3}"], "split": "train", "group": None})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "captions.jsonl").write_text(
        "".join(json.dumps({"image": r["path"], "caption": r["caption"]}) + "\n" for r in rows))
    return root


# -- data -----------------------------------------------------------------------------


def test_caption_jsonl_resolves_relative_paths_and_keeps_labels(tmp_path: Path) -> None:
    make_scene_set(tmp_path, n=4)
    plain = read_caption_jsonl(tmp_path / "captions.jsonl")
    labelled = read_caption_jsonl(tmp_path / "labels.jsonl")
    assert [r.image for r in plain] == [str(tmp_path / "img" / f"{i:03d}.png") for i in range(4)]
    assert plain[0].family is None and labelled[0].family == "row"
    assert labelled[1].objects == ("square1",)
    assert plain[1].caption == CAPTIONS["column"]


def test_caption_jsonl_rejects_missing_image_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(RelsearchError, match="image not found"):
        read_caption_jsonl(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text("{not json\n")
    with pytest.raises(RelsearchError, match="b.jsonl:1"):
        read_caption_jsonl(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "x.png"}) + "\n")
    with pytest.raises(RelsearchError, match="caption"):
        read_caption_jsonl(tmp_path / "c.jsonl")


def test_paper_release_reader_jsonl_and_csv(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for h in ("ab12", "cd34"):
        Image.new("RGB", (8, 8), "red").save(images / f"{h}.png")
    rows = [
        {"image_hash": "ab12", "url_link": "https://example.org/1.jpg", "caption": "{Object} inside {Container}"},
        {"image_hash": "cd34", "url_link": "https://example.org/2.jpg", "caption": "a row of {Object}s"},
        {"image_hash": "ef56", "url_link": "https://example.org/3.jpg", "caption": "never downloaded"},
    ]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (tmp_path / "rows.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image_hash", "url_link", "caption"])
        w.writeheader()
        w.writerows(rows)
    for name in ("rows.jsonl", "rows.csv"):
        recs = read_paper_release(tmp_path / name, image_dir=images)
        assert [Path(r.image).name for r in recs] == ["ab12.png", "cd34.png"]  # the missing one skipped
        assert recs[1].caption == "a row of {Object}s"
    with pytest.raises(RelsearchError, match="ef56"):
        read_paper_release(tmp_path / "rows.jsonl", image_dir=images, skip_missing=False)
    # read_dataset tells the formats apart by the image_hash column
    assert len(read_dataset(tmp_path / "rows.jsonl", image_dir=images)) == 2


def test_paper_release_rejects_path_like_hashes(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image_hash": "../x", "caption": "c"}) + "\n")
    with pytest.raises(RelsearchError, match="invalid image_hash"):
        read_paper_release(tmp_path / "rows.jsonl", image_dir=tmp_path)


# -- loss -----------------------------------------------------------------------------


def test_infonce_known_value_2x2() -> None:
    eye = torch.eye(2)
    cfg = LossConfig(temperature=1.0, mode="infonce")
    # logits [[1, 0], [0, 1]]: each row's loss is -log(e / (e + 1)) = log(1 + 1/e)
    expected = math.log(1 + math.exp(-1))
    assert contrastive_loss(eye, eye, cfg).item() == pytest.approx(expected, abs=1e-6)
    sym = LossConfig(temperature=1.0, mode="infonce", symmetric=True)
    assert contrastive_loss(eye, eye, sym).item() == pytest.approx(expected, abs=1e-6)
    # swapped pairs: each row's loss is -log(1 / (e + 1))
    swapped = contrastive_loss(eye, eye.flip(0), cfg).item()
    assert swapped == pytest.approx(math.log(1 + math.e), abs=1e-6)


def test_aligned_pairs_score_low_at_paper_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1)
    cfg = LossConfig(mode="infonce")
    assert contrastive_loss(x, x, cfg).item() < 0.05
    assert contrastive_loss(x, y, cfg).item() > 1.0


def test_multipositive_stops_pushing_apart_near_duplicate_captions() -> None:
    e = torch.eye(3)
    twin = torch.nn.functional.normalize(e[0] + 0.2 * e[2], dim=0)  # cosine 0.98 to e[0]
    text = torch.stack([e[0], twin, e[1]])  # rows 0 and 1: near-duplicate captions
    assert positive_mask(text, 0.9).tolist() == [[True, True, False], [True, True, False],
                                                 [False, False, True]]
    moves = {}
    for mode in ("multipos", "infonce"):
        image = text.clone().requires_grad_(True)
        contrastive_loss(image, text, LossConfig(mode=mode)).backward()
        # one gradient-descent step on image 0: does it get closer to its twin's caption?
        moves[mode] = float(-image.grad[0] @ twin)
    assert moves["infonce"] < 0 < moves["multipos"]


def test_image_label_loss_pulls_same_family_scenes_together() -> None:
    e = torch.eye(4)
    labels = torch.tensor([0, 0, 1, 1])
    # Two positives per row at temperature 1, known value: -log(e / (e + 2)).
    together = torch.stack([e[0], e[0], e[1], e[1]])
    assert image_label_loss(together, labels, 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    apart = torch.stack([e[0], e[1], e[0], e[1]])  # each scene next to the other family's
    assert image_label_loss(apart, labels).item() > image_label_loss(together, labels).item() + 5
    # Gradient descent on scene 0 moves it towards its family-mate (at e1), off the other family's scene (at e0).
    x = apart.clone().requires_grad_(True)
    image_label_loss(x, labels).backward()
    step = -x.grad[0]
    assert float(step @ e[1]) > 0 > float(step @ e[0])
    # No scene has a family-mate: nothing to learn, a zero that still backpropagates.
    lone = torch.nn.functional.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    zero = image_label_loss(lone, torch.tensor([0, 1, 2]))
    zero.backward()
    assert zero.item() == 0.0 and lone.grad is not None
    with pytest.raises(ValueError, match="labels"):
        image_label_loss(torch.zeros(3, 4), torch.zeros(2))


def test_loss_config_validates() -> None:
    with pytest.raises(ValueError, match="temperature"):
        LossConfig(temperature=0)
    with pytest.raises(ValueError, match="mode"):
        LossConfig(mode="triplet")
    with pytest.raises(ValueError, match="matching"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_warmup_then_cosine() -> None:
    f = lr_lambda(total=100, warmup=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-6)
    assert f(100) == pytest.approx(0.0, abs=1e-9)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))


# -- training loop --------------------------------------------------------------------


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    argv = ["--data", str(data), "--out", str(out), "--batch-size", "8", "--lr", "3e-3",
            "--cache-views", "2", "--no-progress", "--threads", "2"]
    for k, v in TINY_MODEL.items():
        argv += ["--model-arg", f"{k}={json.dumps(v)}"]
    return argv + list(extra)


def test_main_trains_a_few_steps_and_loss_falls(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine_helpers import run_cli

    from relsearch.encoders.relsim_mini import load

    data = make_scene_set(tmp_path / "data", n=16)
    out = tmp_path / "run"
    code = run_cli("train", *_argv(data / "labels.jsonl", out, "--steps", "24", "--val", str(data / "labels.jsonl"),
                      "--warmup-frac", "0.1"))
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 24
    rows = [json.loads(line) for line in (out / METRICS_NAME).read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "event" not in r]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05
    vals = [r["val"] for r in rows if "val" in r]
    assert vals and {"i2t_recall@1", "precision@10", "t2i_precision@10"} <= set(vals[-1])
    # the output folder is a loadable relsim-mini release
    enc = load(source=str(out), device="cpu")
    emb = enc.embed([Image.open(data / "img" / "000.png")])
    assert emb.shape == (1, 384)


def test_main_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine_helpers import run_cli

    out = tmp_path / "run"
    assert run_cli("train", *["--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.jsonl" in err and err.count("\n") == 1
    assert run_cli("train", *["--data", str(tmp_path / "missing.jsonl"), "--out", str(out), "--batch-size", "1"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert not out.exists()


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), batch_size=8, lr=3e-3, steps=6, checkpoint_every=2,
                cache_views=2, progress=False, threads=2, model_args={**TINY_MODEL, "dropout": 0.1})
    return TrainConfig(**{**base, **kw})


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_scene_set(tmp_path / "data", n=16)
    full = train(_config(data / "captions.jsonl", tmp_path / "full"))
    assert full.steps == 6

    class Killed(Exception):
        pass

    def kill_at_5(step: int, loss: float) -> None:
        if step == 5:  # after the step-4 checkpoint, before the step-6 one
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        train(_config(data / "captions.jsonl", out), on_step=kill_at_5)
    at_kill = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert at_kill["step"] == 4
    with pytest.raises(RelsearchError, match="--resume"):
        train(_config(data / "captions.jsonl", out))

    seen: list[int] = []
    resumed = train(_config(data / "captions.jsonl", out, resume=True), on_step=lambda s, _: seen.append(s))
    assert seen == [5, 6] and resumed.steps == 6
    starts = [json.loads(x) for x in (out / METRICS_NAME).read_text().splitlines() if '"start"' in x]
    assert [s["step"] for s in starts] == [0, 4]

    a = torch.load(tmp_path / "full" / CHECKPOINT_NAME, weights_only=True)
    b = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["trainable"]:
        torch.testing.assert_close(a["trainable"][key], b["trainable"][key], rtol=0, atol=0)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for pid, st in a["optimizer"]["state"].items():
        for name, value in st.items():
            torch.testing.assert_close(value, b["optimizer"]["state"][pid][name], rtol=0, atol=0)
    assert a["scheduler"] == b["scheduler"]
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=0)


def test_uncached_path_prepares_images_every_step(tmp_path: Path) -> None:
    # The path encoders without a frozen-feature cache (relsim) take.
    data = make_scene_set(tmp_path / "data", n=16)
    result = train(_config(data / "captions.jsonl", tmp_path / "run", steps=2, cache_views=0))
    assert result.steps == 2 and math.isfinite(result.final_loss)
    assert not (tmp_path / "run" / "feature_cache.pt").exists()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_group_batches_keep_composed_groups_together(tmp_path: Path) -> None:
    # Two grouped compose runs reuse group ids 0-2: a group is its image folder + id. Ungrouped rows stand alone.
    records = [CaptionRecord(f"/c/{d}/images/{d}{g}{f}.jpg", "cap", family=f, group=str(g))
               for d in ("a", "b") for g in range(3) for f in "xyz"]
    records += [CaptionRecord(f"/c/u/images/{i}.jpg", "cap", family="x") for i in range(6)]
    units = group_units(records)
    assert sorted(len(u) for u in units) == [1] * 6 + [3] * 6
    key = {i: (Path(r.image).parent, r.group) for i, r in enumerate(records)}
    for step in range(8):  # two epochs of 4 batches of 6 rows
        idx = batch_indices(24, 6, seed=1, step=step, units=units)
        assert len(idx) == 6 and len(set(idx.tolist())) == 6
    epoch = np.concatenate([batch_indices(24, 6, 1, s, units) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(24))  # every row once per epoch
    for unit in units:  # each group's rows sit next to each other in the epoch's order
        if len(unit) > 1:
            pos = sorted(int(np.flatnonzero(epoch == i)[0]) for i in unit)
            assert pos[-1] - pos[0] == len(unit) - 1 and len({key[i] for i in unit}) == 1
    other = np.concatenate([batch_indices(24, 6, 1, s, units) for s in range(4, 8)])
    assert not np.array_equal(epoch, other)  # a new order each epoch


def test_group_batches_train_on_grouped_rows_only(tmp_path: Path) -> None:
    data = make_scene_set(tmp_path / "data", n=16)
    with pytest.raises(RelsearchError, match="compose --grouped"):
        train(_config(data / "labels.jsonl", tmp_path / "run", group_batches=True))
    assert not (tmp_path / "run").exists()
    # A row and a column scene share a group, as compose --grouped draws one object set in every family.
    rows = [json.loads(x) for x in (data / "labels.jsonl").read_text().splitlines()]
    (data / "grouped.jsonl").write_text("".join(json.dumps({**r, "group": i // 2}) + "\n" for i, r in enumerate(rows)))
    result = train(_config(data / "grouped.jsonl", tmp_path / "run", group_batches=True, symmetric=True,
                           family_positives=True, image_loss=0.5, steps=3))
    assert result.steps == 3 and math.isfinite(result.final_loss)
    args = json.loads((tmp_path / "run" / "train_args.json").read_text())
    assert args["group_batches"] is True and args["image_loss"] == 0.5


def test_image_loss_needs_family_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family_positives"):
        _config(tmp_path / "labels.jsonl", tmp_path / "run", image_loss=0.5)
    with pytest.raises(ValueError, match="image_loss"):
        _config(tmp_path / "labels.jsonl", tmp_path / "run", image_loss=-1.0, family_positives=True)


def test_cache_from_reuses_an_earlier_rounds_rows_and_computes_only_the_new_ones(tmp_path: Path) -> None:
    # A training round's data = the last round's rows + new ones: the last round's cache supplies its rows.
    data = make_scene_set(tmp_path / "data", n=24)
    rows = (data / "captions.jsonl").read_text().splitlines(keepends=True)
    (data / "round1.jsonl").write_text("".join(rows[:16]))
    train(_config(data / "round1.jsonl", tmp_path / "r1", steps=1))
    r1_file = tmp_path / "r1" / CACHE_NAME
    r1 = torch.load(r1_file, weights_only=True)
    assert r1["features"]["trunk"].shape[:2] == (2, 16)
    # Mark the earlier rows (same key): a recompute would not reproduce the mark, reuse keeps it.
    marked = {name: torch.full_like(t, 7.0) for name, t in r1["features"].items()}
    torch.save({"key": r1["key"], "features": marked}, r1_file)

    train(_config(data / "captions.jsonl", tmp_path / "r2", steps=1, cache_from=str(tmp_path / "r1")))
    train(_config(data / "captions.jsonl", tmp_path / "full", steps=1))
    r2 = torch.load(tmp_path / "r2" / CACHE_NAME, weights_only=True)
    full = torch.load(tmp_path / "full" / CACHE_NAME, weights_only=True)
    assert r2["key"] == full["key"]  # a later run on this data reuses it as its own
    for name, t in r2["features"].items():
        assert t.shape == full["features"][name].shape
        assert torch.equal(t[:, :16], marked[name])
        assert not torch.equal(full["features"][name][:, :16], marked[name])
        torch.testing.assert_close(t[0, 16:], full["features"][name][0, 16:], rtol=0, atol=0)  # clean view


def test_cache_from_refuses_a_cache_of_other_rows_or_views(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine_helpers import run_cli

    data = make_scene_set(tmp_path / "data", n=24)
    rows = (data / "captions.jsonl").read_text().splitlines(keepends=True)
    (data / "round1.jsonl").write_text("".join(rows[8:24]))
    train(_config(data / "round1.jsonl", tmp_path / "r1", steps=1))
    with pytest.raises(RelsearchError, match="not the first 16 rows"):
        train(_config(data / "captions.jsonl", tmp_path / "r2", steps=1, cache_from=str(tmp_path / "r1")))
    with pytest.raises(RelsearchError, match="--cache-views 2"):
        train(_config(data / "round1.jsonl", tmp_path / "r3", steps=1, cache_views=1,
                      cache_from=str(tmp_path / "r1" / CACHE_NAME)))
    with pytest.raises(ValueError, match="cache_views"):
        _config(data / "captions.jsonl", tmp_path / "r4", cache_views=0, cache_from=str(tmp_path / "r1"))
    out = tmp_path / "r5"
    assert run_cli("train", *_argv(data / "captions.jsonl", out, "--cache-from", str(tmp_path / "nowhere"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no feature cache there" in err and err.count("\n") == 1
    assert not out.exists()
