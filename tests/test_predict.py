"""Inference on images of any size: a 4-step run on tiny synthetic scenes,
then the CLI, the API, batch invariance and agreement with the eval path."""

from __future__ import annotations

import json

from flax import nnx
import jax
import numpy as np
from PIL import Image
import pytest

from mtdense_jax import config_check
from mtdense_jax import predict
from mtdense_jax import viz
from mtdense_jax.predict import panels
from mtdense_jax.data import pipeline, sources
from mtdense_jax.models import multitask
from mtdense_jax.train import checkpointing as ckpt
from mtdense_jax.train import loop
from mtdense_jax.train import sharding as shd
from mtdense_jax.train import state as state_lib
from mtdense_jax.train import step as step_lib
from tests.conftest import REPO

CONFIG = str(REPO / "configs" / "synthetic_baseline.py") + ":runlocal"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _config(data_dir):
  cfg = config_check.load_config_file(CONFIG)
  cfg.data.data_dir = str(data_dir)
  return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(config, workdir) of a finished 4-step run."""
  cfg = _config(tmp_path_factory.mktemp("tfds"))
  workdir = tmp_path_factory.mktemp("run")
  loop.train_and_evaluate(cfg, str(workdir))
  return cfg, workdir


@pytest.fixture(scope="module")
def predictor(run):
  return predict.Predictor.from_workdir(run[1], batch_size=2)


def _images(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8),
          rng.integers(0, 256, (20, 100, 3), dtype=np.uint8),
          rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)]


def test_config_json_round_trip(run):
  cfg, workdir = run
  back = predict.load_config(workdir / "config.json")
  config_check.validate(back)
  assert back.tasks == tuple(cfg.tasks)
  assert back.data.image_size == tuple(cfg.data.image_size)


def test_place_keeps_aspect_ratio():
  size = (32, 48)
  for hw in [(50, 70), (20, 100), (7, 9), (32, 48), (100, 20)]:
    pl = predict.place(hw, size)
    assert pl.rh <= size[0] and pl.rw <= size[1]
    assert pl.rh == size[0] or pl.rw == size[1]  # fits tightly
    # Aspect kept up to rounding of the shorter fitted side (half a pixel).
    assert abs(pl.rw * hw[0] / hw[1] - pl.rh) <= 0.5 * max(1, hw[0] / hw[1])
    assert (pl.top, pl.left) == ((32 - pl.rh) // 2, (48 - pl.rw) // 2)
  small = predict.place((7, 9), size, upscale=False)
  assert (small.rh, small.rw, small.top, small.left) == (7, 9, 12, 19)


def test_predict_shapes_ranges_and_batching(run, predictor):
  images = _images()
  preds = predictor.predict(images)
  meta = json.loads((run[1] / "dataset_meta.json").read_text())
  nclass = predictor.tasks["semseg"].num_classes
  assert nclass == meta["num_classes"]["semseg"]
  for image, pred in zip(images, preds):
    hw = image.shape[:2]
    assert set(pred) == set(predictor.tasks)
    assert pred["semseg"].shape == hw + (1,)
    assert np.issubdtype(pred["semseg"].dtype, np.integer)
    assert pred["semseg"].min() >= 0 and pred["semseg"].max() < nclass
    assert pred["depth"].shape == hw + (1,) and pred["depth"].min() >= 0
    assert pred["normals"].shape == hw + (3,)
    assert pred["edge"].shape == hw + (1,)
    assert 0 <= pred["edge"].min() and pred["edge"].max() <= 1
  # The same image with other batch companions, at another position and in
  # another batch (batch_size 2): identical outputs.
  again = predictor.predict([images[2], images[1], images[0]])
  alone = predictor.predict([images[1]])
  for t in predictor.tasks:
    np.testing.assert_array_equal(again[1][t], preds[1][t], err_msg=t)
    np.testing.assert_array_equal(again[2][t], preds[0][t], err_msg=t)
    np.testing.assert_array_equal(alone[0][t], preds[1][t], err_msg=t)


def _assert_close(got, want, tasks, where):
  """Different compiled programs (shardings): float32 noise, tol 1e-5;
  label maps may flip only at near-ties (<= 0.1% of pixels)."""
  for t, task in tasks.items():
    g, w = np.asarray(got[t]), np.asarray(want[t])
    assert g.shape == w.shape, (t, where)
    if np.issubdtype(g.dtype, np.integer):
      assert np.mean(g != w) <= 1e-3, (t, where)
    else:
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5,
                                 err_msg=f"{t} {where}")


def test_model_size_image_matches_eval_forward(run, predictor):
  cfg, workdir = run
  tasks = list(cfg.tasks)
  source = sources.load(cfg.data, tasks, cfg.data.eval_split)
  batch = next(iter(pipeline.eval_dataset(source, tasks, cfg.data,
                                          global_batch_size=2)))
  images = [np.asarray(source[i]["image"]) for i in range(2)]
  assert images[0].shape[:2] == tuple(cfg.data.image_size)
  # Preprocessing equals the eval pipeline's (tol 1e-6: float32 rounding).
  for i, image in enumerate(images):
    x, pl = predict.preprocess(image, predictor.size)
    assert (pl.top, pl.left, pl.rh, pl.rw) == (0, 0) + predictor.size
    np.testing.assert_allclose(x, batch["image"][i], atol=1e-6)
  # The loop's own eval forward on the eval batch, separately restored.
  exp = loop.setup(cfg)
  defs, abs_params, abs_stats = state_lib.model_defs(exp.factory)
  repl = shd.replicated(exp.mesh)
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
      {"params": abs_params, "batch_stats": abs_stats})
  params, _ = ckpt.restore_params(workdir / "checkpoints", abstract)
  fwd = jax.jit(step_lib.bind(step_lib.predict_step, defs=defs,
                              tasks=exp.tasks))
  want = jax.device_get(fwd(params["params"], params["batch_stats"],
                            batch["image"]))
  got = predictor.predict(images)
  for i in range(2):
    _assert_close(got[i], {t: v[i] for t, v in want.items()},
                  predictor.tasks, f"image {i}")


def test_padding_is_centred_like_eval(predictor):
  """A smaller image, not enlarged: an independently normalised, centred
  pad through the same forward gives the same crop."""
  p = predict.Predictor(predictor.config, predictor.tasks, predictor.params,
                        batch_size=2, upscale=False)
  image = np.random.default_rng(3).integers(0, 256, (16, 30, 3), np.uint8)
  batch = np.zeros((2,) + p.size + (3,), np.float32)
  top, left = (p.size[0] - 16) // 2, (p.size[1] - 30) // 2
  batch[0, top:top + 16, left:left + 30] = (image / 255.0 - MEAN) / STD
  want = p.forward(batch)
  want = {t: v[0, top:top + 16, left:left + 30] for t, v in want.items()}
  _assert_close(p.predict([image])[0], want, p.tasks, "padded")


def test_cli_writes_pngs_at_original_size(run, tmp_path):
  _, workdir = run
  images = _images()[:2]
  paths = [tmp_path / "a.png", tmp_path / "b.jpg"]
  for path, image in zip(paths, images):
    Image.fromarray(image).save(path)
  out = tmp_path / "out"
  assert predict.main(["--workdir", str(workdir), "--images",
                       *map(str, paths), "--out", str(out),
                       "--save-raw"]) == 0
  for path in paths:
    with Image.open(path) as im:
      w, h = im.size
    for t in ("semseg", "depth", "normals", "edge"):
      with Image.open(out / f"{path.stem}_{t}.png") as im:
        assert im.size == (w, h) and im.mode == "RGB", t
    with Image.open(out / f"{path.stem}_panel.png") as im:
      assert im.size[0] >= w and im.size[1] > h
    raw = np.load(out / f"{path.stem}.npz")
    assert raw["semseg"].shape == (h, w, 1)


def test_params_only_checkpoint_without_dataset(predictor, tmp_path):
  """A converted checkpoint: params item only, a config whose dataset is
  not prepared; num_classes comes from the checkpoint's meta item."""
  conv = tmp_path / "conv"
  ckpt.save_params(conv, predictor.params, meta={
      "converted_from": "test", predict.META_KEY: predictor.meta})
  empty = tmp_path / "no_data"
  empty.mkdir()
  cfg = _config(empty)
  p = predict.Predictor.from_checkpoint(conv, cfg, batch_size=2)
  assert p.tasks["semseg"].num_classes == predictor.tasks["semseg"].num_classes
  assert not any(empty.iterdir())  # nothing was prepared
  images = _images(seed=1)
  got, want = p.predict(images), predictor.predict(images)
  for g, w in zip(got, want):
    for t in p.tasks:
      np.testing.assert_array_equal(g[t], w[t], err_msg=t)
  # The CLI form, config from a file.
  (tmp_path / "cfg.json").write_text(cfg.to_json_best_effort())
  Image.fromarray(images[0]).save(tmp_path / "x.png")
  assert predict.main(["--checkpoint", str(conv), "--config",
                       str(tmp_path / "cfg.json"), "--images",
                       str(tmp_path / "x.png"), "--out",
                       str(tmp_path / "o")]) == 0
  assert (tmp_path / "o" / "x_panel.png").exists()


def test_invpt_params_checkpoint_pascal_tasks(tmp_path):
  """A converter-style InvPT checkpoint (random weights) with PASCAL's five
  tasks and no metadata: the head sizes are given explicitly, every task is
  predicted and drawn."""
  cfg = config_check.load_config_file(
      str(REPO / "configs" / "pascal_invpt.py") + ":runlocal")
  cfg.data.data_dir = str(tmp_path / "no_data")
  outputs = {"semseg": 21, "human_parts": 7, "sal": 2, "normals": 3,
             "edge": 1}
  assert set(outputs) == set(cfg.tasks)
  model = multitask.build_model(
      cfg.model, task_outputs={t: outputs[t] for t in cfg.tasks},
      img_size=tuple(cfg.data.image_size), rngs=nnx.Rngs(0))
  ckpt.save_params(tmp_path / "invpt", {
      "params": nnx.state(model, nnx.Param),
      "batch_stats": nnx.state(model, nnx.BatchStat)})
  with pytest.raises(ValueError, match="--num-classes"):
    predict.Predictor.from_checkpoint(tmp_path / "invpt", cfg)
  p = predict.Predictor.from_checkpoint(
      tmp_path / "invpt", cfg, batch_size=1,
      num_classes={"semseg": 21, "human_parts": 7})
  assert {t: p.tasks[t].num_outputs for t in cfg.tasks} == {
      t: outputs[t] for t in cfg.tasks}
  image = _images()[1]
  pred = p.predict([image])[0]
  assert pred["human_parts"].shape == (20, 100, 1)
  assert 0 <= pred["human_parts"].min() and pred["human_parts"].max() < 7
  assert pred["sal"].shape == (20, 100, 1)
  colours = p.colorize(pred)
  assert all(c.shape == (20, 100, 3) and c.dtype == np.uint8
             for c in colours.values())
  assert p.panel(image, pred).ndim == 3


def test_cli_failures_are_one_line_with_exit_codes(run, tmp_path, capsys):
  """A missing image or a workdir without config.json is a usage error (2);
  a workdir without a checkpoint is an error (1); one line, no traceback."""
  _, workdir = run
  image = tmp_path / "x.png"
  Image.fromarray(_images()[0]).save(image)
  with pytest.raises(SystemExit) as e:
    predict.main(["--workdir", str(workdir), "--images",
                  str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
  assert e.value.code == 2
  assert "nope.jpg" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    predict.main(["--workdir", str(tmp_path), "--images", str(image),
                  "--out", str(tmp_path / "o")])
  assert e.value.code == 2
  assert "config.json" in capsys.readouterr().err
  empty = tmp_path / "untrained"
  empty.mkdir()
  (empty / "config.json").write_text((workdir / "config.json").read_text())
  assert predict.main(["--workdir", str(empty), "--images", str(image),
                       "--out", str(tmp_path / "o")]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("Error: No checkpoint in") and "\n" not in err
  assert not (tmp_path / "o").exists()


def test_checkpoint_meta_comes_before_workdir_file(run, predictor, tmp_path):
  """meta["dataset_meta"] of the checkpoint wins over dataset_meta.json."""
  cfg, workdir = run
  conv = tmp_path / "conv"
  mine = dict(predictor.meta, class_names={"semseg": ["x"] * 3})
  ckpt.save_params(conv, predictor.params, meta={predict.META_KEY: mine})
  got = predict.resolve_meta(cfg, workdir=workdir, checkpoint=conv)
  assert got["class_names"] == {"semseg": ["x"] * 3}
  on_disk = json.loads((workdir / predict.META_FILE).read_text())
  assert got["class_names"] != on_disk.get("class_names")
  # No meta item: the workdir file is the fallback.
  plain = tmp_path / "plain"
  ckpt.save_params(plain, predictor.params)
  got = predict.resolve_meta(cfg, workdir=workdir, checkpoint=plain)
  assert got["num_classes"] == on_disk["num_classes"]


def test_panel_draws_legend_of_present_classes(predictor):
  """Each class present in the semseg prediction gets its swatch under the
  tile; the depth tile gets the shared colour bar."""
  image = _images()[0]
  pred = predictor.predict([image])[0]
  names = predictor.meta["class_names"]["semseg"]
  rgb = predictor.panel(image, pred)
  plain = predict.panel([("input", image)] +
                        list(predictor.colorize(pred).items()))
  assert rgb.shape[0] > plain.shape[0]  # the legend / colour bar strip
  task = predictor.tasks["semseg"]
  present = np.unique(pred["semseg"])
  absent = sorted(set(range(task.num_classes)) - set(present.tolist()))
  swatch = task.colorize(np.arange(task.num_classes).reshape(1, -1, 1))[0]
  strip = panels.footer(task, pred["semseg"], predictor.meta, "semseg", 400)
  for c in present:
    assert np.all(strip == swatch[c], axis=-1).any(), names[c]
  for c in absent:  # only what the prediction contains is listed
    assert not np.all(strip == swatch[c], axis=-1).any(), names[c]
  bar = panels.footer(predictor.tasks["depth"], pred["depth"],
                      predictor.meta, "depth", 200)
  lo, hi = predictor.tasks["depth"].vis_range
  ends = viz.scalar_rgb(np.array([[lo, hi]]), lo, hi)[0]
  assert np.all(bar[2, 4] == ends[0]) and np.all(bar[2, 200 - 5] == ends[1])


def test_restore_renormalises_unit_vectors():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(8, 8, 3)).astype(np.float32)
  v /= np.linalg.norm(v, axis=-1, keepdims=True)
  pl = predict.place((20, 20), (8, 8))
  out = predict.restore(v, pl)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
  scalar = predict.restore(v[..., :1], pl)  # not a unit field: untouched
  assert scalar.shape == (20, 20, 1)
