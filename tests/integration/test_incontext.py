"""promptseg.incontext end to end on the tiny SegGPT: predictor, ensembles, video, tuning, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.incontext import palette as pal
from promptseg.incontext.predictor import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InContextPrediction,
    SegGptPredictor,
    decode_prediction,
    normalize,
    to_colors,
)


@pytest.fixture(scope="module")
def model(helpers):
    """The tiny SegGPT with every parameter perturbed (its tokens are initialised to zero: the type
    tokens would make "instance" and "semantic" identical)."""
    from promptseg.models.seggpt import build_seggpt

    torch.manual_seed(0)
    return helpers.perturb_(build_seggpt("tiny"), seed=1, std=0.05).eval()


@pytest.fixture(scope="module")
def predictor(model):
    return SegGptPredictor(model)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    from promptseg.models.seggpt import save_seggpt

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_seggpt(model, path)
    return path


@pytest.fixture(scope="module")
def sequence():
    from promptseg.incontext.synth_video import make_sequence

    return make_sequence(0, num_frames=4, size=(48, 64), num_objects=2)


def _example(h=40, w=50, seed=0, labels=1):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.int64)
    mask[5:20, 5:25] = 1
    if labels > 1:
        mask[25:35, 30:45] = 2
    return image, mask


# --------------------------------------------------------------------------------------------- conventions
def test_normalisation_matches_transformers_image_processor():
    from transformers import SegGptImageProcessor

    image, mask = _example(32, 32, labels=2)
    proc = SegGptImageProcessor(size={"height": 32, "width": 32})
    out = proc(images=image, prompt_images=image, prompt_masks=mask.astype(np.uint8), num_labels=2,
               return_tensors="np")
    np.testing.assert_allclose(normalize(image), out["pixel_values"][0], atol=1e-5)
    hf_palette = np.array(proc.get_palette(2)[1:], np.uint8)
    np.testing.assert_allclose(normalize(pal.encode_labels(mask, hf_palette)), out["prompt_masks"][0], atol=1e-5)


def test_decoding_matches_transformers_post_processing():
    from types import SimpleNamespace

    from transformers import SegGptImageProcessor

    proc = SegGptImageProcessor()
    pred = torch.randn(1, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    expected = proc.post_process_semantic_segmentation(SimpleNamespace(pred_masks=pred), num_labels=2)[0].numpy()
    hf_palette = np.array(proc.get_palette(2)[1:], np.uint8)
    ours = decode_prediction(to_colors(pred[:, :, 16:])[0], (16, 16), hf_palette)
    assert (ours.labels == expected).mean() > 0.999  # equal up to float ties
    assert tuple(IMAGENET_MEAN) == tuple(proc.image_mean) and tuple(IMAGENET_STD) == tuple(proc.image_std)


# --------------------------------------------------------------------------------------------- predictor
def test_predict_shapes_at_the_original_size(predictor):
    image, mask = _example(labels=2)
    target = np.random.default_rng(5).integers(0, 256, (70, 45, 3), dtype=np.uint8)
    res = predictor.predict(target, [(image, mask)])
    assert isinstance(res, InContextPrediction)
    assert res.labels.shape == (70, 45) and res.labels.dtype == np.int32
    assert res.masks.shape == (2, 70, 45) and res.masks.dtype == np.bool_
    assert res.colored.shape == (70, 45, 3) and res.colored.dtype == np.uint8
    np.testing.assert_array_equal(res.palette, pal.default_palette(2))
    np.testing.assert_array_equal(res.masks[1], res.labels == 2)
    assert set(np.unique(res.labels)) <= {0, 1, 2}
    many = predictor.predict([target, target[:30], target.astype(np.float32) / 255], (image, mask))
    assert [r.labels.shape for r in many] == [(70, 45), (30, 45), (70, 45)]
    np.testing.assert_allclose(many[0].colored.astype(int), res.colored.astype(int), atol=1)  # batched alike
    stacked = predictor.predict(np.stack([target, target]), [(image, mask)])
    assert isinstance(stacked, list) and len(stacked) == 2


def test_batching_does_not_change_results(model):
    image, mask = _example()
    targets = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    one = SegGptPredictor(model, batch_size=1).predict(targets, [(image, mask)])
    three = SegGptPredictor(model, batch_size=3).predict(targets, [(image, mask)])
    for a, b in zip(one, three):
        np.testing.assert_allclose(a.colored.astype(int), b.colored.astype(int), atol=1)


def test_ensemble_modes(predictor, model):
    target = np.random.default_rng(9).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ex = [_example(32, 32, seed=s) for s in range(3)]
    none = predictor.predict(target, ex[:1], ensemble="none")
    feature1 = predictor.predict(target, ex[:1], ensemble="feature")
    spatial1 = predictor.predict(target, ex[:1], ensemble="spatial")
    np.testing.assert_array_equal(feature1.colored, none.colored)  # one example: no ensemble at all
    np.testing.assert_array_equal(spatial1.colored, none.colored)  # a 1×1 grid is the example itself
    feature = predictor.predict(target, ex, ensemble="feature")
    spatial = predictor.predict(target, ex, ensemble="spatial")
    for r in (feature, spatial):
        assert r.labels.shape == (32, 32)
    assert not np.array_equal(feature.colored, none.colored)
    assert not np.array_equal(spatial.colored, feature.colored)
    # the feature ensemble is the model's feature_ensemble over the examples as a batch (row 0 read)
    ctx = predictor.build_context(ex, ensemble="feature")
    assert ctx.images.shape == (3, 3, 32, 32) and ctx.feature_ensemble
    x = torch.from_numpy(normalize(target))[None].expand(3, -1, -1, -1)
    with torch.no_grad():
        out = model(x, ctx.images, ctx.masks, feature_ensemble=True).pred_masks[:1, :, 32:]
    np.testing.assert_array_equal(decode_prediction(to_colors(out)[0], (32, 32), ctx.palette).colored, feature.colored)
    ctx = predictor.build_context(ex, ensemble="spatial")
    assert ctx.images.shape == (1, 3, 32, 32) and not ctx.feature_ensemble


def test_spatial_grid_tiles_examples():
    from promptseg.incontext.predictor import grid_cells, tile_examples

    assert len(grid_cells(3, (32, 32))) == 4 and len(grid_cells(4, (32, 32))) == 4 and len(grid_cells(5, (32, 32))) == 9
    images = [np.full((10, 10, 3), v, np.uint8) for v in (10, 20, 30)]
    masks = [np.full((10, 10, 3), v, np.uint8) for v in (1, 2, 3)]
    img, mask = tile_examples(images, masks, (32, 32))
    assert img[0, 0, 0] == 10 and img[0, 31, 0] == 20 and img[31, 0, 0] == 30 and img[31, 31, 0] == 10  # cycled
    assert mask[0, 0, 0] == 1 and mask[31, 31, 0] == 1


def test_colour_masks_define_the_palette(predictor):
    image, labels = _example(labels=2)
    colors = np.array([[200, 0, 0], [0, 0, 200]], np.uint8)
    rgb = pal.encode_labels(labels, colors)
    res = predictor.predict(image, [(image, rgb)])
    np.testing.assert_array_equal(res.palette, colors[::-1])  # labels follow sorted RGB: blue is 1, red 2
    ref = predictor.predict(image, [(image, np.array([0, 2, 1])[labels])], palette=colors[::-1])
    np.testing.assert_array_equal(res.labels, ref.labels)
    fixed = predictor.predict(image, [(image, rgb)], palette=colors)  # a palette fixes the numbering
    np.testing.assert_array_equal(fixed.palette, colors)
    with pytest.raises(ValueError, match=r"examples\[0\] mask has colour\(s\) \[\(200, 0, 0\)\] that are not in"):
        predictor.predict(image, [(image, rgb)], palette=[[0, 0, 200], [9, 9, 9]])
    with pytest.raises(ValueError, match=r"examples\[1\] mask is a label map but examples\[0\] mask is a colour mask: "
                                         "examples mix label-map masks and colour masks"):
        predictor.predict(image, [(image, rgb), (image, labels)])
    with pytest.raises(ValueError, match=r"examples\[2\] mask is a colour mask but examples\[0\] mask is a label map"):
        predictor.predict(image, [(image, labels), (image, labels), (image, rgb)])


def test_a_grey_colour_mask_among_colour_masks_is_a_colour_mask(predictor):
    """A colour mask whose only object happens to be white (R = G = B) is still a colour mask next to others."""
    image, labels = _example(labels=2)
    both = pal.encode_labels(labels, np.array([[255, 0, 0], [255, 255, 255]], np.uint8))  # red 1, white 2
    white = pal.encode_labels(labels == 1, np.array([[255, 255, 255]], np.uint8))
    res = predictor.predict(image, [(image, both), (image, white)])
    np.testing.assert_array_equal(res.palette, [[255, 0, 0], [255, 255, 255]])
    from promptseg.incontext.predictor import resize_nearest

    ctx = predictor.build_context([(image, both), (image, white)], ensemble="feature")
    np.testing.assert_array_equal(ctx.masks[1], normalize(resize_nearest(white, predictor.image_size)))  # still white


def test_bad_inputs_raise_value_errors_naming_the_argument(predictor):
    image, mask = _example()
    target = image
    with pytest.raises(ValueError, match=r"examples\[1\]: the image is 40×50 but its mask is 40×49"):
        predictor.predict(target, [(image, mask), (image, mask[:, :-1])])
    with pytest.raises(ValueError, match=r"examples\[0\] mask is empty"):
        predictor.predict(target, [(image, np.zeros_like(mask))])
    with pytest.raises(ValueError, match="ensemble"):
        predictor.predict(target, [(image, mask)], ensemble="mean")
    with pytest.raises(ValueError, match="ensemble='none' takes exactly one example"):
        predictor.predict(target, [(image, mask)] * 2, ensemble="none")
    with pytest.raises(ValueError, match="give examples"):
        predictor.predict(target)
    with pytest.raises(ValueError, match="examples must be a non-empty list"):
        predictor.predict(target, [])
    with pytest.raises(ValueError, match=r"examples\[0\] must be an \(image, mask\) pair"):
        predictor.predict(target, [image])
    with pytest.raises(ValueError, match="target_images"):
        predictor.predict(np.zeros((4, 4, 2), np.uint8), [(image, mask)])
    with pytest.raises(ValueError, match=r"target_images\[1\]"):
        predictor.predict([target, np.full((4, 4, 3), 2.0)], [(image, mask)])
    with pytest.raises(ValueError, match=r"examples\[0\] image"):
        predictor.predict(target, [(image[..., :2], mask)])
    with pytest.raises(ValueError, match="embedding_type"):
        predictor.predict(target, [(image, mask)], embedding_type="panoptic")
    with pytest.raises(ValueError, match="palette has 1 colours but the example masks have labels up to 2"):
        predictor.predict(target, [_example(labels=2)], palette=[[255, 0, 0]])
    with pytest.raises(TypeError, match="target_images"):
        predictor.predict("image.png", [(image, mask)])


def test_too_many_labels_name_the_example(predictor):
    image, mask = _example()
    with pytest.raises(ValueError, match=r"examples\[1\] mask: palette has 124 colours but the example masks have "
                                         r"labels up to 200 \(the fixed palette holds at most 124\)"):
        predictor.predict(image, [(image, mask), (image, mask * 200)])
    with pytest.raises(ValueError, match=r"examples\[0\] mask: palette has 1 colours .* labels up to 2$"):
        predictor.predict(image, [_example(labels=2), (image, mask)], palette=[[255, 0, 0]])


def test_semantic_embedding_changes_the_output(model, predictor):
    image, mask = _example()
    a = predictor.predict(image, [(image, mask)])
    b = predictor.predict(image, [(image, mask)], embedding_type="semantic")
    c = SegGptPredictor(model, embedding_type="semantic").predict(image, [(image, mask)])
    assert not np.array_equal(a.colored, b.colored)
    np.testing.assert_array_equal(b.colored, c.colored)


def test_editing_a_result_palette_does_not_change_later_predictions(predictor):
    image, mask = _example(labels=2)
    context = predictor.build_context([(image, mask)])
    first, second = predictor.predict_with_context([image, image], context)
    before = predictor.predict_with_context(image, context).labels.copy()
    first.palette[:] = [[1, 2, 3], [4, 5, 6]]  # a caller's edit of its own result
    np.testing.assert_array_equal(second.palette, pal.default_palette(2))
    np.testing.assert_array_equal(context.palette, pal.default_palette(2))
    after = predictor.predict_with_context(image, context)
    np.testing.assert_array_equal(after.palette, pal.default_palette(2))
    np.testing.assert_array_equal(after.labels, before)


def test_a_prompt_refuses_a_palette_other_than_its_own(predictor):
    from promptseg.incontext.tuning import TunedPrompt

    image, mask = _example(labels=2)
    prompt = TunedPrompt.from_example(image, mask, predictor.image_size)
    with pytest.raises(ValueError, match="palette differs from the prompt's own"):
        predictor.predict(image, prompt=prompt, palette=[[255, 0, 0], [0, 0, 255]])
    same = predictor.predict(image, prompt=prompt, palette=pal.default_palette(2))  # its own palette: fine
    np.testing.assert_array_equal(same.labels, predictor.predict(image, prompt=prompt).labels)


def test_max_distance_is_checked_before_any_forward_pass(model, predictor, monkeypatch):
    image, mask = _example()
    with pytest.raises(ValueError, match="max_distance must be ≥ 0, got -5"):
        SegGptPredictor(model, max_distance=-5)
    with pytest.raises(TypeError, match="max_distance must be a number"):
        SegGptPredictor(model, max_distance="3")
    calls = []
    monkeypatch.setattr(predictor.model, "forward", lambda *a, **k: calls.append(1))
    for bad, error in (("3", TypeError), (True, TypeError), (-1.0, ValueError), (float("nan"), ValueError)):
        with pytest.raises(error, match="max_distance"):
            predictor.predict(image, [(image, mask)], max_distance=bad)
    assert not calls


# --------------------------------------------------------------------------------------------- video
class _Spy:
    """Wraps a predictor and records how many examples each call got."""

    def __init__(self, inner):
        self.inner, self.counts = inner, []

    def predict(self, frame, examples, **kwargs):
        self.counts.append(len(examples))
        return self.inner.predict(frame, examples, **kwargs)


def test_segment_video_fifo(predictor, sequence):
    from promptseg.incontext.video import segment_video

    spy = _Spy(predictor)
    out = list(segment_video(spy, sequence.frames * 2, sequence.labels[0], fifo=2))
    assert len(out) == 8
    np.testing.assert_array_equal(out[0], sequence.labels[0])  # the given annotation
    assert all(o.shape == (48, 64) and o.dtype == np.int32 for o in out)
    assert spy.counts[0] == 1 and max(spy.counts) <= 3  # first frame + at most K = 2 previous ones
    with pytest.raises(ValueError, match="first_mask is empty"):
        list(segment_video(predictor, sequence.frames, np.zeros((48, 64), int)))
    with pytest.raises(ValueError, match="first_mask is 48×63 but the first frame is 48×64"):
        list(segment_video(predictor, sequence.frames, sequence.labels[0][:, :-1]))


def test_segment_video_colour_mask_follows_the_palette(predictor, sequence):
    from promptseg.incontext.video import segment_video

    red, blue = [200, 0, 0], [0, 0, 200]
    rgb = pal.encode_labels(sequence.labels[0], np.array([red, blue], np.uint8))  # object 1 red, object 2 blue
    out = list(segment_video(predictor, sequence.frames[:2], rgb, fifo=0, palette=[red, blue]))
    np.testing.assert_array_equal(out[0], sequence.labels[0])  # the palette fixes the numbering: red is 1
    ref = predictor.predict(sequence.frames[1], [(sequence.frames[0], rgb)], palette=[red, blue])
    np.testing.assert_array_equal(out[1], ref.labels)  # the prompt is drawn in the mask's own colours
    with pytest.raises(ValueError, match=r"first_mask has colour\(s\) .* not in the palette"):
        list(segment_video(predictor, sequence.frames, rgb, palette=[[10, 200, 10], [200, 200, 10]]))
    with pytest.raises(ValueError, match="first_mask has labels up to 200 but the fixed palette holds at most 124"):
        list(segment_video(predictor, sequence.frames, sequence.labels[0] * 100))


def test_segment_video_is_not_changed_by_edits_of_its_outputs_or_a_reused_frame_buffer(predictor, sequence):
    from promptseg.incontext.video import segment_video

    frames = sequence.frames * 2
    ref = [lab.copy() for lab in segment_video(predictor, frames, sequence.labels[0], fifo=2)]
    edited = []
    for lab in segment_video(predictor, frames, sequence.labels[0], fifo=2):
        edited.append(lab.copy())
        lab[:] = 0  # the caller post-processes the yielded map in place
    buffer = np.empty_like(frames[0])

    def reused():  # a reader that decodes every frame into the same array
        for f in frames:
            buffer[...] = f
            yield buffer

    streamed = [lab.copy() for lab in segment_video(predictor, reused(), sequence.labels[0], fifo=2)]
    for a, b, c in zip(ref, edited, streamed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_run_video_refuses_frames_with_the_same_name(predictor, sequence, tmp_path):
    from promptseg.incontext.video import run_video

    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    Image.fromarray(sequence.frames[0]).save(frames_dir / "a.png")
    Image.fromarray(sequence.frames[1]).save(frames_dir / "a.jpg")  # both would be written to OUTDIR/a.png
    with pytest.raises(ValueError, match=r"frames a\.jpg and a\.png would both be written to .*a\.png"):
        run_video(predictor, frames_dir, sequence.labels[0], tmp_path / "out", progress=False)


def test_run_video_writes_masks_from_a_folder_and_a_video_file(predictor, sequence, tmp_path):
    pytest.importorskip("cv2")
    from promptseg.incontext.video import open_frames, run_video

    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, f in enumerate(sequence.frames):  # natural order: f2 before f10
        Image.fromarray(f).save(frames_dir / f"f{[2, 10, 11, 30][i]}.png")
    run = run_video(predictor, frames_dir, sequence.labels[0], tmp_path / "out", fifo=1, progress=False)
    assert [p.name for p in run.masks] == ["f2.png", "f10.png", "f11.png", "f30.png"]
    assert len(run.overlays) == 4 and all(p.is_file() for p in run.masks + run.overlays)
    np.testing.assert_array_equal(pal.read_label_png(run.masks[0]), sequence.labels[0])
    video = _write_avi(tmp_path / "clip.avi", sequence.frames)
    source = open_frames(video)
    names = [name for name, _ in source]
    assert names == ["00000", "00001", "00002", "00003"]
    run = run_video(predictor, source, sequence.labels[0], tmp_path / "vid", overlay=False, progress=False)
    assert len(run.masks) == 4 and not run.overlays and not (tmp_path / "vid" / "overlays").exists()
    with pytest.raises(ValueError, match="is the frames folder"):
        run_video(predictor, frames_dir, sequence.labels[0], frames_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        open_frames(tmp_path / "missing")
    (tmp_path / "junk.mp4").write_bytes(b"nope")
    with pytest.raises(ValueError, match="cannot read video"):
        open_frames(tmp_path / "junk.mp4")


def _write_avi(path, frames):
    """``frames`` (RGB ``H×W×3``) as an MJPG video file at ``path``."""
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    for f in frames:
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return path


def test_run_video_releases_the_video_when_a_frame_fails(predictor, sequence, tmp_path, monkeypatch):
    """A prediction error (or Ctrl-C) mid-video left the OpenCV capture open for as long as the exception
    lived (a notebook keeps the last one): one file descriptor and a decoder per failed run."""
    import cv2

    from promptseg.incontext.video import open_frames, run_video

    video = _write_avi(tmp_path / "clip.avi", sequence.frames)
    source = open_frames(video)
    captures = []
    real = cv2.VideoCapture

    class Capture:
        def __init__(self, *args):
            self.cap, self.released = real(*args), False
            captures.append(self)

        def read(self):
            return self.cap.read()

        def get(self, prop):
            return self.cap.get(prop)

        def release(self):
            self.released = True
            self.cap.release()

    class Failing:
        def predict(self, *args, **kwargs):
            raise RuntimeError("prediction failed")

    monkeypatch.setattr(cv2, "VideoCapture", Capture)
    with pytest.raises(RuntimeError, match="prediction failed") as info:
        run_video(Failing(), source, sequence.labels[0], tmp_path / "out", overlay=False, progress=False)
    assert info.value.__traceback__ is not None  # the exception, with run_video's frame, is still alive
    assert captures and all(c.released for c in captures)


def test_evaluate_vos_on_synthetic_sequences(predictor, sequence):
    from promptseg.incontext.synth_video import make_sequences
    from promptseg.incontext.video import evaluate_vos

    class Oracle:  # returns the ground truth: J&F must be exactly 1
        def predict(self, frame, examples, **kwargs):
            i = next(i for i, f in enumerate(sequence.frames) if f is frame)
            return InContextPrediction(sequence.labels[i].astype(np.int32), None, None, None)

    assert evaluate_vos(Oracle(), [sequence])["JF_mean"] == 1.0
    seqs = make_sequences(2, seed=3, num_frames=4, size=(32, 32), num_objects=2, emoji=False)
    assert all(len(np.unique(s.labels[0])) == 3 for s in seqs)  # every object shows in the first frame
    report = evaluate_vos(predictor, seqs, fifo=2)
    for key in ("J_mean", "F_mean", "JF_mean"):
        assert 0.0 <= report[key] <= 1.0
    assert set(report["sequences"]) == {"synth_0003", "synth_0004"} and report["num_objects"] == 4


def test_synthetic_sequence_is_deterministic_with_exact_labels():
    from promptseg.incontext.synth_video import make_sequence

    a = make_sequence(7, num_frames=3, size=(40, 50), num_objects=3, emoji=False)
    b = make_sequence(7, num_frames=3, size=(40, 50), num_objects=3, emoji=False)
    for fa, fb, la, lb in zip(a.frames, b.frames, a.labels, b.labels):
        np.testing.assert_array_equal(fa, fb)
        np.testing.assert_array_equal(la, lb)
        assert fa.shape == (40, 50, 3) and la.shape == (40, 50) and la.max() <= 3
    assert not np.array_equal(a.labels[0], a.labels[2])  # objects move


# --------------------------------------------------------------------------------------------- tuning
def test_tuning_lowers_the_loss_and_keeps_the_model(model, predictor, tmp_path):
    from promptseg.incontext.tuning import TunedPrompt, evaluate_prompt, tune_prompt

    pairs = [_example(32, 32, seed=s, labels=2) for s in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    result = tune_prompt(model, pairs, steps=6, lr=0.05, batch_size=2, seed=0)
    assert len(result.losses) == 6
    assert result.final_loss < result.initial_loss
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [p.requires_grad for p in model.parameters()] == flags and not model.training
    prompt = result.prompt
    assert prompt.image_size == (32, 32) and prompt.image.shape == (3, 32, 32)
    assert evaluate_prompt(model, prompt, pairs) == pytest.approx(result.final_loss, rel=1e-5)

    path = prompt.save(tmp_path / "p.safetensors")
    loaded = TunedPrompt.load(path)
    assert torch.equal(loaded.image, prompt.image) and torch.equal(loaded.mask, prompt.mask)
    np.testing.assert_array_equal(loaded.palette, prompt.palette)
    assert loaded.embedding_type == "instance" and loaded.metadata["steps"] == 6
    target = pairs[0][0]
    a, b = predictor.predict(target, prompt=prompt), predictor.predict(target, prompt=loaded)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.masks.shape == (2, 32, 32)
    image, mask = prompt.to_images()
    assert image.shape == mask.shape == (32, 32, 3) and image.dtype == np.uint8

    with pytest.raises(ValueError, match="either examples or prompt"):
        predictor.predict(target, pairs[:1], prompt=prompt)
    small = TunedPrompt(prompt.image[:, :16], prompt.mask[:, :16], prompt.palette)
    with pytest.raises(ValueError, match="tuned for 16×32 inputs but the model takes 32×32"):
        predictor.predict(target, prompt=small)
    (tmp_path / "other.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read tuned prompt"):
        TunedPrompt.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="pairs is empty"):
        tune_prompt(model, [], steps=1)
    with pytest.raises(ValueError, match="learn"):
        tune_prompt(model, pairs, learn="everything")


def test_tuning_only_the_mask_leaves_the_image(model):
    from promptseg.incontext.tuning import TunedPrompt, tune_prompt

    pairs = [_example(32, 32, seed=4)]
    result = tune_prompt(model, pairs, steps=2, lr=0.05, learn="mask")
    start = TunedPrompt.from_example(*pairs[0], (32, 32))
    assert torch.equal(result.prompt.image, start.image)
    assert not torch.equal(result.prompt.mask, start.mask)


def test_tuning_a_model_in_train_mode_scores_in_eval_mode_and_names_pairs(model, monkeypatch):
    from promptseg.incontext import tuning
    from promptseg.incontext.tuning import evaluate_prompt, tune_prompt

    pairs = [_example(32, 32, seed=s) for s in range(2)]
    model.train()  # drop path is active in train mode: the reported losses must not see it
    try:
        torch.manual_seed(0)
        result = tune_prompt(model, pairs, steps=1, lr=0.05)
        assert model.training
    finally:
        model.eval()
    assert result.final_loss == evaluate_prompt(model, result.prompt, pairs)
    assert result.prompt.metadata["final_loss"] == result.final_loss
    with pytest.raises(ValueError, match=r"pairs\[1\]: the image is 32×32 but its mask is 32×31"):
        tune_prompt(model, [pairs[0], (pairs[1][0], pairs[1][1][:, :-1])], steps=1)
    with pytest.raises(ValueError, match="init mask is empty"):
        tune_prompt(model, pairs, steps=1, init=(pairs[0][0], np.zeros((32, 32), int)))
    flags = [p.requires_grad for p in model.parameters()]

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tuning, "_mean_loss", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        tune_prompt(model, pairs, steps=1)
    assert [p.requires_grad for p in model.parameters()] == flags  # unfrozen again after the failure


def test_tuning_starts_from_the_numbering_shared_with_the_pairs(model):
    """A grey-only RGB mask among colour masks is the colour white in the pairs' numbering: the prompt starts
    from it painted white, as the targets are, not in palette[0] (red), as the mask alone would be read."""
    from promptseg.incontext.tuning import evaluate_prompt, tune_prompt

    rng = np.random.default_rng(0)
    white = np.zeros((32, 32, 3), np.uint8)
    white[4:20, 4:20] = 255
    both = np.zeros((32, 32, 3), np.uint8)
    both[4:12, 4:12], both[20:30, 20:30] = (255, 0, 0), 255
    pairs = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), m) for m in (white, both)]
    result = tune_prompt(model, pairs, steps=0)
    assert result.prompt.palette.tolist() == [[255, 0, 0], [255, 255, 255]]
    _, mask = result.prompt.to_images()
    np.testing.assert_array_equal(mask, white)
    assert result.initial_loss == result.final_loss == evaluate_prompt(model, result.prompt, pairs)


def test_tuning_restores_every_module_mode_and_evaluate_prompt_scores_in_eval_mode(model):
    from promptseg.incontext.tuning import evaluate_prompt, tune_prompt

    pairs = [_example(32, 32, seed=s) for s in range(2)]
    model.train()
    model.encoder.eval()  # a frozen part kept in eval mode while the rest trains
    try:
        modes = {name: m.training for name, m in model.named_modules()}
        result = tune_prompt(model, pairs, steps=1, lr=0.05)
        assert {name: m.training for name, m in model.named_modules()} == modes
        model.train()  # drop path active: evaluate_prompt must still score as tune_prompt does, and keep the mode
        scores = [evaluate_prompt(model, result.prompt, pairs) for _ in range(2)]
        assert scores == [result.final_loss] * 2 and model.training and model.encoder.training
    finally:
        model.eval()
    for seed in (-1, 1.5, None):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            tune_prompt(model, pairs, steps=1, seed=seed)


def test_evaluate_vos_scores_a_binary_0_255_annotation_in_its_own_ids(sequence):
    """A DAVIS-2016-style 0/255 annotation is object 1 to the propagation: predictions are scored against
    the ground truth's id 255 (a perfect prediction scored 0 before)."""
    from promptseg.incontext.video import evaluate_vos

    gt = [(lab == 1).astype(np.uint8) * 255 for lab in sequence.labels]

    class Oracle:
        def predict(self, frame, examples, **kwargs):
            i = next(i for i, f in enumerate(sequence.frames) if np.array_equal(f, frame))
            return InContextPrediction((gt[i] > 0).astype(np.int32), None, None, None)

    report = evaluate_vos(Oracle(), [("binary", sequence.frames, gt)])
    assert report["JF_mean"] == 1.0 and report["num_objects"] == 1


def test_evaluate_vos_names_a_sequence_without_frames(predictor, sequence):
    """A sequence of zero frames (and zero label maps) failed with ``IndexError: list index out of range``;
    it is a ValueError naming the sequence."""
    from promptseg.incontext.video import evaluate_vos

    with pytest.raises(ValueError, match="sequence 'empty' has no frames"):
        evaluate_vos(predictor, [sequence, ("empty", [], [])])


def test_synthetic_sequences_show_every_object_in_the_first_frame(monkeypatch):
    from promptseg.incontext import synth_video
    from promptseg.incontext.synth_video import make_sequence

    for seed in (0, 3):  # no placement of the 50 tries shows all 20 at 30 %: the last try hid some entirely
        seq = make_sequence(seed, num_frames=1, size=(32, 32), num_objects=20, emoji=False)
        assert set(np.unique(seq.labels[0]).tolist()) == set(range(21))
    monkeypatch.setattr(synth_video, "_paste", lambda *args: None)  # nothing ever shows
    with pytest.raises(ValueError, match="cannot place 2 objects in a 32×32 frame"):
        make_sequence(0, num_frames=1, size=(32, 32), num_objects=2, emoji=False)


# --------------------------------------------------------------------------------------------- CLI
def _write_pair(folder, name, image, labels):
    Image.fromarray(image).save(folder / f"{name}.png")
    pal.save_label_png(labels, folder / f"{name}_mask.png")
    return str(folder / f"{name}.png"), str(folder / f"{name}_mask.png")


def test_cli_end_to_end(checkpoint, sequence, tmp_path, capsys):
    from promptseg.cli import main

    img0, mask0 = _write_pair(tmp_path, "f0", sequence.frames[0], sequence.labels[0])
    img1, mask1 = _write_pair(tmp_path, "f1", sequence.frames[1], sequence.labels[1])
    ck = str(checkpoint)
    out = tmp_path / "out"
    assert main(["incontext", img1, "--example", img0, mask0, "--example", img1, mask1, "--checkpoint", ck,
                 "-o", str(out), "--ensemble", "spatial", "--colored"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["f1.colored.png", "f1.overlay.png", "f1.png"]
    assert pal.read_label_png(out / "f1.png").shape == (48, 64)

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(sequence.frames):
        Image.fromarray(f).save(frames / f"{i:03d}.jpg")
    assert main(["incontext", "video", str(frames), "--first-mask", mask0, "-o", str(tmp_path / "vid"),
                 "--fifo", "1", "--checkpoint", ck, "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "vid").glob("*.png")) == ["000.png", "001.png", "002.png", "003.png"]
    assert len(list((tmp_path / "vid" / "overlays").glob("*.png"))) == 4

    prompt = tmp_path / "prompt.safetensors"
    assert main(["incontext", "tune", "--pair", img0, mask0, "--pair", img1, mask1, "-o", str(prompt),
                 "--steps", "2", "--checkpoint", ck, "-q", "--preview"]) == 0
    assert prompt.is_file() and (tmp_path / "prompt.png").is_file()
    assert main(["incontext", str(frames), "--prompt", str(prompt), "--checkpoint", ck, "-o", str(tmp_path / "tuned"),
                 "--no-overlay"]) == 0
    assert sorted(p.name for p in (tmp_path / "tuned").iterdir()) == ["000.png", "001.png", "002.png", "003.png"]
    assert "loss" in capsys.readouterr().out


def test_cli_colour_masks_share_one_numbering_across_examples(checkpoint, model, tmp_path):
    """Colour PNGs are colours in every example (as in SegGptPredictor.predict), not numbered file by file:
    red is one label in an example with red and blue and in one with red only."""
    from promptseg.cli import main
    from promptseg.incontext.cli import _pairs
    from promptseg.incontext.predictor import prepare_examples

    image, labels = _example(labels=2)
    red, blue = [220, 0, 0], [0, 0, 220]
    both = pal.encode_labels(labels, np.array([red, blue], np.uint8))
    only_red = pal.encode_labels(np.where(labels == 1, 1, 0), np.array([red], np.uint8))
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(both).save(tmp_path / "both.png")
    Image.fromarray(only_red).save(tmp_path / "red.png")
    img, a, b = (str(tmp_path / n) for n in ("img.png", "both.png", "red.png"))
    read = prepare_examples(_pairs([[img, a], [img, b]], "--example"))
    assert set(read.labels[0][labels == 1].tolist()) == set(read.labels[1][labels == 1].tolist())  # red: one label
    out = tmp_path / "out"
    assert main(["incontext", img, "--example", img, a, "--example", img, b, "--checkpoint", str(checkpoint),
                 "-o", str(out), "--no-overlay"]) == 0
    expected = SegGptPredictor(model).predict(image, [(image, both), (image, only_red)]).labels
    np.testing.assert_array_equal(pal.read_label_png(out / "img.png"), expected)


def test_cli_errors_exit_2(checkpoint, sequence, tmp_path, capsys, monkeypatch):
    from promptseg.cli import main
    from promptseg.incontext import predictor as predictor_module

    img0, mask0 = _write_pair(tmp_path, "f0", sequence.frames[0], sequence.labels[0])
    monkeypatch.setattr(predictor_module, "default_seggpt_path", lambda: None)
    assert main(["incontext", img0, "--example", img0, mask0, "-o", str(tmp_path / "o")]) == 2
    assert "bundles no default SegGPT model" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    assert main(["incontext", "video", str(tmp_path / "clip.mp4"), "--first-mask", mask0, "-o", str(tmp_path / "v")]) == 2
    assert "cannot read video" in capsys.readouterr().err
    assert main(["incontext", img0, "-o", str(tmp_path / "o")]) == 2
    assert "--example IMG MASK" in capsys.readouterr().err
    small = str(tmp_path / "small.png")
    Image.fromarray(np.ones((5, 5), np.uint8)).save(small)
    assert main(["incontext", img0, "--example", img0, small, "--checkpoint", str(checkpoint), "-o", str(tmp_path / "o")]) == 2
    assert "the image is 64×48 pixels but the mask is 5×5" in capsys.readouterr().err
    assert main(["incontext", "missing.png", "--example", img0, mask0, "-o", str(tmp_path / "o")]) == 2
    assert "target not found" in capsys.readouterr().err
    assert main(["incontext", "tune", "--pair", img0, mask0, "-o", str(tmp_path / "p.bin")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    before = (tmp_path / "f0_mask.png").read_bytes()
    assert main(["incontext", "tune", "--pair", img0, mask0, "-o", str(tmp_path / "f0_mask.safetensors"), "--preview",
                 "--steps", "1", "--checkpoint", str(checkpoint), "-q"]) == 2  # its preview is f0_mask.png
    assert "would overwrite the input" in capsys.readouterr().err
    assert (tmp_path / "f0_mask.png").read_bytes() == before
    assert main(["incontext", "tune", "--pair", img0, mask0, "-o", str(tmp_path / "p.safetensors"), "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["incontext", "video", "--fifo", "-1", img0, "--first-mask", mask0, "-o", "x"]) == 2
    assert "promptseg incontext video: error" in capsys.readouterr().err
    assert main(["incontext", img0, "--example", img0, mask0, "-o", str(tmp_path)]) == 2
    assert "would overwrite the target" in capsys.readouterr().err
    assert main(["incontext", img0, "--example", img0, mask0, "--checkpoint", str(checkpoint), "--device", "nonsense",
                 "-o", str(tmp_path / "o")]) == 2
    assert "--device nonsense cannot be used on this machine" in capsys.readouterr().err
    assert main(["incontext", "--help"]) == 0
    assert "incontext video --help" in capsys.readouterr().out


def test_cli_colour_mask_examples_share_one_numbering(tmp_path):
    """Colour PNG examples are numbered over all examples together (sorted RGB), as the API numbers them."""
    from promptseg.incontext.cli import _pairs
    from promptseg.incontext.predictor import prepare_examples

    image = np.zeros((10, 10, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    a = np.zeros((10, 10, 3), np.uint8)
    a[:5], a[5:, :5] = (255, 0, 0), (0, 255, 0)  # red and green
    b = np.zeros((10, 10, 3), np.uint8)
    b[:5] = (255, 0, 0)  # red only
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    img = str(tmp_path / "img.png")
    ex = prepare_examples(_pairs([(img, str(tmp_path / "a.png")), (img, str(tmp_path / "b.png"))], "--example"))
    np.testing.assert_array_equal(ex.palette, [[0, 255, 0], [255, 0, 0]])
    assert ex.labels[0][0, 0] == ex.labels[1][0, 0] == 2  # red is label 2 in both examples


def test_cli_refuses_outputs_that_overwrite_any_input(checkpoint, tmp_path, capsys):
    from promptseg.cli import main

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(photos / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(photos / "a.png")
    before = (photos / "a.png").read_bytes()
    ex, ex_mask = _write_pair(tmp_path, "ex", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),
                              np.pad(np.ones((5, 5), np.int64), ((5, 10), (5, 20))))
    ck = str(checkpoint)
    # a.jpg's label map OUTDIR/a.png is the target a.png (still to be read)
    assert main(["incontext", str(photos), "--example", ex, ex_mask, "--checkpoint", ck, "-o", str(photos)]) == 2
    assert "would overwrite the target" in capsys.readouterr().err
    assert (photos / "a.png").read_bytes() == before and sorted(p.name for p in photos.iterdir()) == ["a.jpg", "a.png"]
    # ex_mask.jpg's label map would be the example's mask
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "ex_mask.jpg")
    assert main(["incontext", str(tmp_path / "ex_mask.jpg"), "--example", ex, ex_mask, "--checkpoint", ck,
                 "-o", str(tmp_path)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_cli_output_names_stay_unique():
    from pathlib import Path

    from promptseg.incontext.cli import _output_names

    # a.png becomes a_2: the target a_2.png may not be written to the same a_2.png
    assert _output_names([Path("a.jpg"), Path("a.png"), Path("a_2.png")]) == ["a", "a_2", "a_2_2"]
    assert _output_names([Path("x/a.png"), Path("y/a.png"), Path("z/a.png")]) == ["a", "a_2", "a_3"]


def test_predictor_gives_the_same_with_the_transformers_model(model, predictor):
    """The predictor's I/O conventions hold for transformers' SegGptForImageSegmentation too."""
    from transformers import SegGptConfig as HfSegGptConfig
    from transformers import SegGptForImageSegmentation

    from promptseg.models.seggpt.weights import config_to_hf, to_hf_state_dict

    fields = {k: v for k, v in config_to_hf(model.config).items() if k not in ("model_type", "architectures")}
    hf = SegGptForImageSegmentation(HfSegGptConfig(**fields)).eval()
    hf.load_state_dict(to_hf_state_dict(model))
    theirs = SegGptPredictor(hf)
    assert theirs.image_size == predictor.image_size == (32, 32)
    target = np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    ex = [_example(seed=s, labels=2) for s in range(2)]
    for ensemble in ("feature", "spatial"):
        a, b = predictor.predict(target, ex, ensemble=ensemble), theirs.predict(target, ex, ensemble=ensemble)
        np.testing.assert_allclose(a.colored.astype(int), b.colored.astype(int), atol=1)
