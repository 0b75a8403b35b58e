"""The bundled default SegGPT: loaded when no checkpoint is given, small, and an official-format SegGPT.

"Official format" is checked by loading the same weights into ``transformers``' ``SegGptForImageSegmentation``
(built from the bundled config): the outputs agree to |Δ| ≤ 1e-4 in float32, for one example and for several
with the feature ensemble. A sanity check of what it learned: given a scene and its own mask as the example,
the model colours that object again (the easiest in-context task: the same view) far better than the
whole image would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.incontext import predictor as predictor_module

pytestmark = pytest.mark.skipif(predictor_module.default_seggpt_path() is None,
                                reason="this build bundles no default SegGPT")

MAX_BYTES = 40 * 1024 * 1024  # issue #5: ≤ 40 MB inside the package
ATOL = 1e-4


@pytest.fixture(scope="module")
def default_model():
    return predictor_module.load_model()


def test_load_model_returns_the_bundled_model(default_model):
    path = predictor_module.default_seggpt_path()
    assert path.name == predictor_module.DEFAULT_SEGGPT_FILE and path.stat().st_size <= MAX_BYTES
    assert not any(torch.isnan(p).any() for p in default_model.parameters())
    assert not default_model.training
    assert predictor_module.load_model(dtype=torch.bfloat16).embeddings.mask_token.dtype == torch.bfloat16


@pytest.mark.parametrize("examples, feature_ensemble", [(1, False), (3, True)])
def test_transformers_reference_gives_the_same_outputs(default_model, examples, feature_ensemble):
    transformers = pytest.importorskip("transformers")
    from promptseg.models.seggpt.weights import config_to_hf, to_hf_state_dict

    ref = transformers.SegGptForImageSegmentation(transformers.SegGptConfig.from_dict(config_to_hf(default_model.config)))
    ref.load_state_dict(to_hf_state_dict(default_model))
    ref.eval()
    h, w = default_model.image_size
    gen = torch.Generator().manual_seed(examples)
    inputs = {name: torch.randn(examples, 3, h, w, generator=gen)
              for name in ("pixel_values", "prompt_pixel_values", "prompt_masks")}
    with torch.no_grad():
        expected = ref(**inputs, feature_ensemble=feature_ensemble, embedding_type="semantic").pred_masks
        got = default_model(**inputs, feature_ensemble=feature_ensemble, embedding_type="semantic").pred_masks
    diff = (got - expected).abs().max().item()
    assert diff <= ATOL, f"pred_masks: max |Δ| = {diff:.3g}"


def test_default_predictor_recolours_the_example_object():
    """The easiest in-context task — the example is the target itself — on scenes like the training ones.
    Measured when the model was bundled: mean IoU 0.45 over these 12 scenes; the whole image scores 0.10."""
    from promptseg.data.synth import SynthConfig, emoji_font_available, generate_scene
    from promptseg.eval.protocols import mask_iou
    from promptseg.incontext import SegGptPredictor

    if not emoji_font_available():
        pytest.skip("needs fonts-noto-color-emoji (the model was trained on emoji scenes)")
    predictor = SegGptPredictor.from_checkpoint()  # no checkpoint: the bundled model
    config = SynthConfig(size=160, min_objects=2, max_objects=6, object_scale=(0.25, 0.6), crowd_prob=0.0)
    ious, whole = [], []
    for index in range(12):
        scene = generate_scene(index, seed=5, config=config)
        top = [i for i, parent in enumerate(scene.parents) if parent < 0]
        mask = scene.masks[max(top, key=lambda i: scene.masks[i].sum())]  # the largest object
        result = predictor.predict(scene.image, [(scene.image, mask)], ensemble="none")
        ious.append(mask_iou(result.mask, mask))
        whole.append(mask.mean())
    assert np.mean(ious) > 0.3 and np.mean(ious) > 2.5 * np.mean(whole), ious
