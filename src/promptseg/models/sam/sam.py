"""The Segment Anything model, composed from injected parts (segment-anything.txt §3, Fig. 4)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from promptseg import transforms
from promptseg.models.sam.image_encoder import ImageEncoderViT
from promptseg.models.sam.mask_decoder import MaskDecoder
from promptseg.models.sam.prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """``Sam(image_encoder, prompt_encoder, mask_decoder)``.

    The image encoder runs once per image; prompt encoder and mask decoder run per prompt on the cached
    embedding. ``pixel_mean``/``pixel_std`` are in 0–255 RGB units and are not part of the state dict
    (as in the official checkpoints).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
        pixel_std: Sequence[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.config: Any = None  # set by the builders to the SamConfig the model was made from

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size

    @torch.no_grad()
    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool) -> List[Dict[str, Tensor]]:
        """The reference's end-to-end batched call (inference: no autograd graph, as the reference's).

        Each input dict holds ``image`` (``3×H×W`` already resized so the long side is ``img_size``),
        ``original_size`` ``(H, W)`` and optionally ``point_coords`` ``B×N×2``, ``point_labels`` ``B×N``,
        ``boxes`` ``B×4``, ``mask_inputs`` ``B×1×256×256``. Returns per image ``masks`` ``B×C×H×W`` (bool),
        ``iou_predictions`` ``B×C`` and ``low_res_logits`` ``B×C×256×256`` (float32 whatever the model dtype).
        """
        input_images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        image_embeddings = self.image_encoder(input_images)
        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                embedding.unsqueeze(0), self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
            low_res, iou = low_res.float(), iou.float()  # float32 whatever the model dtype, as SamPredictor's
            binary = self.binary_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append({"masks": binary, "iou_predictions": iou, "low_res_logits": low_res})
        return outputs

    def postprocess_masks(
        self, masks: Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...]
    ) -> Tensor:
        """Low-res logits ``B×C×h×w`` → logits at the original image size ``B×C×H×W`` (removes padding)."""
        return transforms.postprocess_masks(masks, tuple(input_size), tuple(original_size), self.img_size)

    def binary_masks(self, masks: Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...]) -> Tensor:
        """Low-res logits ``B×C×h×w`` → bool masks ``B×C×H×W`` (``postprocess_masks(…) > mask_threshold``)."""
        return transforms.postprocess_to_binary(
            masks, tuple(input_size), tuple(original_size), self.img_size, self.mask_threshold
        )

    def preprocess(self, x: Tensor) -> Tensor:
        """Normalise pixel values and pad to a square ``img_size`` input: ``…×3×h×w`` → ``…×3×S×S``."""
        h, w = x.shape[-2:]
        if h > self.img_size or w > self.img_size:
            raise ValueError(
                f"image must be resized so that its longest side is img_size {self.img_size} "
                f"(ResizeLongestSide), got {h}×{w}"
            )
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
