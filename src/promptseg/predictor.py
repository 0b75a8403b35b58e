"""``SamPredictor``: encode an image once, then prompt it many times.

Drop-in for ``segment_anything.SamPredictor`` (same names, arguments, defaults, return types and
coordinate conventions: ``x`` right, ``y`` down, pixels of the original image). promptseg adds:

* :meth:`SamPredictor.predict_many` — ``B`` prompts in one call (several boxes, each with its own clicks);
* :meth:`SamPredictor.set_images` — a batch of images, prompted with ``image_index``;
* binary masks (bool/uint8 at image size) accepted as mask prompts, not only 256×256 logits;
* grayscale, RGBA, uint16 and float images converted explicitly (:func:`transforms.to_rgb_uint8`);
* the model's device and dtype (bfloat16 included) are used throughout; outputs are float32/bool.

The numpy methods validate and convert their inputs, then call :meth:`predict_torch`: one numeric path.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from promptseg.config_utils import is_integer
from promptseg.models.sam.mask_decoder import ImageKeys
from promptseg.models.sam.sam import Sam
from promptseg.prompts import PAD_LABEL, POSITIVE_LABEL, as_array, check_boxes, check_points
from promptseg.transforms import ResizeLongestSide, get_preprocess_shape, mask_to_logits, to_rgb_uint8

Size = Tuple[int, int]
NumpyResult = Tuple[np.ndarray, np.ndarray, np.ndarray]


class SamPredictor:
    def __init__(self, sam_model: Sam) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    # ------------------------------------------------------------------ images
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode ``image`` (``H×W×3`` uint8 in ``image_format``; see :func:`to_rgb_uint8` for others)."""
        self.set_images([image], image_format)

    def set_images(self, images: Sequence[np.ndarray], image_format: str = "RGB", batch_size: int = 1) -> None:
        """Encode several images, ``batch_size`` at a time; prompt image ``i`` with ``image_index=i``."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(images, np.ndarray) or len(images) == 0:
            raise ValueError("images must be a non-empty sequence of H×W×C arrays")
        if not is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
        tensors, sizes = [], []
        for i, image in enumerate(images):
            rgb = to_rgb_uint8(image, name="image" if len(images) == 1 else f"images[{i}]")
            if min(get_preprocess_shape(*rgb.shape[:2], self.transform.target_length)) < 1:
                raise ValueError(f"image of shape {rgb.shape[:2]} is too elongated: its short side would resize to 0 px")
            if image_format != self.model.image_format:
                rgb = rgb[..., ::-1]
            resized = self.transform.apply_image(np.ascontiguousarray(rgb))
            tensors.append(torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None])
            sizes.append(rgb.shape[:2])
        self._encode(tensors, sizes, batch_size)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: Tensor, original_image_size: Tuple[int, ...]) -> None:
        """Encode an image already resized by ``self.transform``: ``1×3×h×w`` with ``max(h, w) == img_size``."""
        self._check_torch_image(transformed_image)
        original = self._check_original_size(original_image_size, tuple(transformed_image.shape[-2:]))
        self._encode([transformed_image], [original], 1)

    def _check_torch_image(self, image: Tensor) -> None:
        size = self.model.image_encoder.img_size
        if not isinstance(image, Tensor):
            raise TypeError(f"transformed_image must be a torch.Tensor, got {type(image).__name__}")
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3 or max(image.shape[2:]) != size:
            raise ValueError(
                f"transformed_image must have shape 1×3×H×W with longest side {size}, got {tuple(image.shape)}"
            )

    def _check_original_size(self, size: object, input_size: Size) -> Size:
        """``original_image_size`` as ``(H, W)`` ints ≥ 1 that ``self.transform`` resizes to ``input_size``
        (±1 px of rounding): a swapped or wrong size would silently mis-scale prompts and masks."""
        try:
            h, w = (float(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"original_image_size must be (H, W), got {size!r}") from None
        if not (h.is_integer() and w.is_integer() and h >= 1 and w >= 1):
            raise ValueError(f"original_image_size must be two integers ≥ 1 (H, W), got {size!r}")
        expected = get_preprocess_shape(h, w, self.transform.target_length)
        if max(abs(a - b) for a, b in zip(expected, input_size)) > 1:
            raise ValueError(
                f"original_image_size (H, W) = ({h:.0f}, {w:.0f}) resizes to {expected}, but transformed_image "
                f"is {input_size[0]}×{input_size[1]}: pass the size of the image before self.transform"
            )
        return int(h), int(w)

    @torch.no_grad()
    def _encode(self, images: List[Tensor], original_sizes: List[Tuple[int, ...]], batch_size: int) -> None:
        self.reset_image()
        dtype = self.model.dtype
        features = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.cat([self.model.preprocess(t.to(self.device, torch.float32)) for t in chunk])
            # the encoder casts the float32 pixels to its own dtype; its output goes to the decoder's dtype
            features.append(self.model.image_encoder(batch).to(dtype))
        self.features = torch.cat(features)
        self.input_sizes = [tuple(int(s) for s in t.shape[-2:]) for t in images]
        self.original_sizes = [tuple(int(s) for s in size) for size in original_sizes]
        self.original_size, self.input_size = self.original_sizes[0], self.input_sizes[0]
        self.is_image_set = True

    def get_image_embedding(self) -> Tensor:
        """The embedding of the set image(s): ``I×256×64×64`` for the official models."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        clear_cache = getattr(self.model.mask_decoder, "clear_cache", None)
        if clear_cache is not None:  # weights written through ``param.data`` carry no version to notice
            clear_cache()
        self._decoder_cache: Dict[int, ImageKeys] = {}
        self._dense_pe: Optional[Tensor] = None
        self._cached_weights: Optional[Tuple[int, ...]] = None
        self._watched: Optional[List[Tensor]] = None
        self._watched_parts: Tuple[torch.nn.Module, ...] = ()
        self.features: Optional[Tensor] = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size: Optional[Size] = None
        self.input_size: Optional[Size] = None
        self.original_sizes: List[Size] = []
        self.input_sizes: List[Size] = []

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ numpy API
    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int = 0,
    ) -> NumpyResult:
        """Masks for one prompt on the set image.

        Args:
            point_coords: ``N×2`` clicks (x, y) in original-image pixels.
            point_labels: ``N`` labels, 1 foreground / 0 background (-1 padding, 2 / 3 box corners).
            box: ``4`` XYXY box in original-image pixels.
            mask_input: ``1×256×256`` logits from a previous call, or a binary ``H×W`` mask (bool/uint8).
            multimask_output: 3 ambiguity-aware masks (True) or 1 (False); ``"auto"``: 3 only for a
                single click (padding points aside) without box or mask (§A).
            return_logits: return logits instead of thresholded masks.
        Returns:
            masks ``C×H×W`` (bool, or float logits), scores ``C``, low-res logits ``C×256×256``.
        """
        masks, scores, low = self._predict_numpy(
            point_coords, point_labels, box, mask_input, multimask_output, return_logits, image_index, False
        )
        return masks[0], scores[0], low[0]

    def predict_many(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: Union[bool, str] = True,
        return_logits: bool = False,
        image_index: int = 0,
    ) -> NumpyResult:
        """``B`` prompts in one decoder pass: ``B×N×2`` clicks, ``B×N`` labels, ``B×4`` boxes,
        ``B×1×256×256`` logits or ``B×H×W`` binary masks — each prompt may combine them. Prompts with fewer
        clicks are padded with label ``-1``; a padding click is a token the decoder attends to (as in SAM,
        whose own one-click call appends one), so an item equals a single :meth:`predict` only when that call
        gets the same tokens.

        Returns masks ``B×C×H×W``, scores ``B×C``, low-res logits ``B×C×256×256``.
        """
        return self._predict_numpy(
            point_coords, point_labels, boxes, mask_input, multimask_output, return_logits, image_index, True
        )

    def _predict_numpy(
        self,
        point_coords: Optional[np.ndarray],
        point_labels: Optional[np.ndarray],
        boxes: Optional[np.ndarray],
        mask_input: Optional[np.ndarray],
        multimask_output: Union[bool, str],
        return_logits: bool,
        image_index: int,
        batched: bool,
    ) -> NumpyResult:
        self._require_image(image_index)
        original = self.original_sizes[image_index]
        coords_t = labels_t = boxes_t = masks_t = None
        counts = []
        if point_coords is not None:
            coords, labels = check_points(point_coords, point_labels, original, batched)
            coords_t = self._tensor(self.transform.apply_coords(coords, original), torch.float)
            labels_t = self._tensor(labels, torch.int)
            counts.append(("point_coords", coords.shape[0]))
        elif point_labels is not None:
            raise ValueError("point_labels given without point_coords")
        if boxes is not None:
            arr = check_boxes(boxes, original, batched, name="boxes" if batched else "box")
            boxes_t = self._tensor(self.transform.apply_boxes(arr, original), torch.float)
            counts.append(("boxes" if batched else "box", arr.shape[0]))
        if mask_input is not None:
            masks_t = self._mask_prompt(mask_input, original, batched)
            counts.append(("mask_input", masks_t.shape[0]))
        if not counts:
            raise ValueError("empty prompt: give point_coords/point_labels, a box, or mask_input")
        if len({n for _, n in counts}) > 1:
            raise ValueError(f"prompt batch sizes disagree: {dict(counts)}")
        multimask = self._resolve_multimask(multimask_output, labels_t, boxes_t, masks_t)
        masks, scores, low = self.predict_torch(
            coords_t, labels_t, boxes_t, masks_t, multimask, return_logits, image_index=image_index
        )
        return masks.cpu().numpy(), scores.cpu().numpy(), low.cpu().numpy()

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def _mask_prompt(self, mask_input: np.ndarray, original: Size, batched: bool) -> Tensor:
        """Logits (float, ``[B×]1×h×w``) or binary masks (bool/uint8, ``[B×]H×W``) → ``B×1×h×w`` logits."""
        arr = as_array(mask_input, "mask_input")
        low = self.model.prompt_encoder.mask_input_size
        if batched and (arr.ndim < 3 or arr.shape[0] == 0):
            raise ValueError(f"mask_input must hold B ≥ 1 masks (B×H×W or B×1×{low[0]}×{low[1]}), got {arr.shape}")
        if arr.dtype == np.bool_ or arr.dtype == np.uint8:
            expect = (-1,) + tuple(original) if batched else tuple(original)
            if arr.ndim != len(expect) or arr.shape[-2:] != tuple(original):
                raise ValueError(
                    f"binary mask_input must have the image's size {'B×' if batched else ''}{original[0]}×{original[1]}, "
                    f"got {arr.shape}"
                )
            binary = arr.reshape(-1, *original) > 0
            logits = np.stack([mask_to_logits(m, self.model.image_encoder.img_size, grid=low[0]) for m in binary])
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise ValueError("mask_input contains NaN or infinite values")
            shape = arr.shape[1:] if batched else arr.shape
            if batched and arr.ndim == 3:
                shape = (1,) + arr.shape[1:]
            if tuple(shape) != (1,) + low:
                raise ValueError(
                    f"mask_input logits must have shape {'B×' if batched else ''}1×{low[0]}×{low[1]} "
                    f"(low_res_logits of a previous call), got {arr.shape}; pass a bool mask of the image size "
                    "to prompt with a binary mask"
                )
            logits = arr.reshape(-1, 1, *low)
        else:
            raise TypeError(f"mask_input must be float logits or a bool/uint8 mask, got dtype {arr.dtype}")
        return self._tensor(logits.reshape(-1, 1, *low), torch.float)

    @staticmethod
    def _resolve_multimask(
        multimask_output: Union[bool, str], labels: Optional[Tensor], boxes: Optional[Tensor], masks: Optional[Tensor]
    ) -> bool:
        if isinstance(multimask_output, str) and multimask_output == "auto":
            if labels is None or boxes is not None or masks is not None:
                return False  # §A: ambiguity is rare with several prompts → the single-mask token
            clicks = labels != PAD_LABEL  # padding points (label -1, as SAM's ONNX examples append) are no clicks
            return bool((clicks.sum(dim=-1) == 1).all() and (labels[clicks] <= POSITIVE_LABEL).all())
        if not isinstance(multimask_output, (bool, np.bool_)):
            raise TypeError(f"multimask_output must be True, False or 'auto', got {multimask_output!r}")
        return bool(multimask_output)

    # ------------------------------------------------------------------ torch API
    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor] = None,
        mask_input: Optional[Tensor] = None,
        multimask_output: Union[bool, str] = True,
        return_logits: bool = False,
        image_index: int = 0,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Batched prediction with prompts already in the model-input frame (``self.transform`` applied).

        Args:
            point_coords: ``B×N×2``; point_labels: ``B×N``; boxes: ``B×4``; mask_input: ``B×1×256×256``;
            multimask_output: True, False or ``"auto"`` (as :meth:`predict`).
        Returns:
            masks ``B×C×H×W`` (bool unless ``return_logits``), IoU predictions ``B×C`` and low-res
            logits ``B×C×256×256``, all float32/bool whatever the model dtype.
        """
        self._require_image(image_index)
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        points = (point_coords, point_labels) if point_coords is not None else None
        for name, prompt in (("point_coords", point_coords), ("boxes", boxes), ("mask_input", mask_input)):
            if prompt is not None and (prompt.ndim == 0 or prompt.shape[0] == 0):  # the decoder failed on B = 0
                raise ValueError(f"{name} must hold B ≥ 1 prompts, got shape {tuple(prompt.shape)}")
        multimask_output = self._resolve_multimask(multimask_output, point_labels, boxes, mask_input)
        low = tuple(self.model.prompt_encoder.mask_input_size)
        if mask_input is not None and (mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != (1,) + low):
            raise ValueError(  # a 1×h×w tensor would run as an unbatched image: a wrong mask, no error
                f"mask_input must have shape B×1×{low[0]}×{low[1]} (low_res_logits of a previous call), "
                f"got {tuple(mask_input.shape)}"
            )
        model = self.model
        self._drop_stale_caches()
        sparse, dense = model.prompt_encoder(points, boxes, mask_input)
        low_res, iou = model.mask_decoder(
            self.features[image_index : image_index + 1],
            self._image_pe(),
            sparse,
            dense,
            multimask_output,
            image_keys=self._image_keys(image_index) if mask_input is None else None,
        )
        low_res, iou = low_res.float(), iou.float()
        size, original = self.input_sizes[image_index], self.original_sizes[image_index]
        if return_logits:
            return model.postprocess_masks(low_res, size, original), iou, low_res
        return model.binary_masks(low_res, size, original), iou, low_res

    def _drop_stale_caches(self) -> None:
        """Forget the positional encoding and decoder keys cached for the set image(s) when a weight they
        depend on was changed in place (an optimiser step, ``load_state_dict``) or its storage replaced
        (``.to``) since: the reference recomputes them on every call, so a fine-tuning loop that prompts the
        same image between steps must see the new weights. (The image embedding itself, as in the
        reference, is the encoder's at ``set_image`` time; the tensors watched are listed once per image,
        and again when ``model.prompt_encoder`` or ``model.mask_decoder`` is replaced by another module.)
        Writes through ``param.data`` (older EMA code) change no version, and parameters replaced inside the
        parts (``load_state_dict(assign=True)``) are not watched: they are seen from the next ``set_image``
        on, or after :meth:`reset_image`."""
        parts = (self.model.prompt_encoder, self.model.mask_decoder)
        if self._watched is None or any(a is not b for a, b in zip(parts, self._watched_parts)):
            self._watched_parts = parts
            self._watched = [t for part in parts for t in itertools.chain(part.parameters(), part.buffers())]
        weights = tuple(v for t in self._watched for v in (t._version, t.data_ptr()))
        if weights != self._cached_weights:
            self._decoder_cache, self._dense_pe, self._cached_weights = {}, None, weights

    def _image_pe(self) -> Tensor:
        if self._dense_pe is None:
            self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        return self._dense_pe

    def _image_keys(self, image_index: int) -> ImageKeys:
        """The decoder's prompt-independent work for image ``image_index``, computed on first use."""
        if image_index not in self._decoder_cache:
            _, no_mask = self.model.prompt_encoder(None, None, None)
            self._decoder_cache[image_index] = self.model.mask_decoder.image_keys(
                self.features[image_index : image_index + 1], self._image_pe(), no_mask
            )
        return self._decoder_cache[image_index]

    def _require_image(self, image_index: int = 0) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if not is_integer(image_index):
            raise TypeError(f"image_index must be an int, got {image_index!r}")
        if not 0 <= image_index < len(self.original_sizes):
            raise ValueError(f"image_index must be in [0, {len(self.original_sizes)}), got {image_index}")
