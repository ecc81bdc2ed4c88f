"""Visual encoder: timm backbones by name, weights from a file, RoIAlign through the backbone stride."""

from pathlib import Path

import pytest
import timm
import torch

from mmclip_dist.model.visual import VisualEncoder, create_backbone


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b2", "efficientnet_b4", "test_resnet"])
def test_paper_backbones_build_and_run(name: str) -> None:
    enc = VisualEncoder(name, embed_dim=8, roi_dim=6, roi_output_size=2).eval()
    assert enc.stride == 32
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [8.0, 16.0, 40.0, 60.0]]]).repeat(2, 1, 1)
    valid = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        glob, roi = enc(torch.rand(2, 3, 64, 48), boxes, valid)
    assert glob.shape == (2, 8) and roi.shape == (2, 2, 6)
    assert torch.all(roi[0, 1] == 0) and roi[1, 1].abs().sum() > 0


def _coordinate_maps() -> torch.Tensor:
    # Two images; channel 0 holds the x index of each cell, channel 1 the y index.
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(10.0), indexing="ij")
    one = torch.stack([xs, ys])
    return torch.stack([one, one + 100.0])


def test_roi_align_maps_input_pixel_boxes_through_the_stride() -> None:
    enc = VisualEncoder("test_resnet", embed_dim=4, roi_dim=4, roi_output_size=7)
    fmap = _coordinate_maps()
    # Box x in [64, 192] px, y in [32, 160] px; stride 32 and aligned=True (pixel centres) put it at
    # feature x in [1.5, 5.5], y in [0.5, 4.5]. Bilinear sampling of a linear map averages to the centre.
    boxes = torch.tensor([[[64.0, 32.0, 192.0, 160.0]], [[96.0, 64.0, 160.0, 128.0]]])
    pooled = enc.roi_pool([fmap], boxes)
    assert pooled.shape == (2, 1, 2)
    assert torch.allclose(pooled[0, 0], torch.tensor([3.5, 2.5]), atol=1e-5)
    # Second image (batch index 1, values +100): x in [2.5, 4.5], y in [1.5, 3.5].
    assert torch.allclose(pooled[1, 0], torch.tensor([103.5, 102.5]), atol=1e-5)


def test_roi_pool_without_rois() -> None:
    enc = VisualEncoder("test_resnet", embed_dim=4, roi_dim=4)
    assert enc.roi_pool([_coordinate_maps()], torch.zeros(2, 0, 4)).shape == (2, 0, enc.roi_in_dim)


def test_backbone_weights_from_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(123)
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    loaded = create_backbone("test_resnet", str(path))
    random = create_backbone("test_resnet", "")
    key = next(k for k in loaded.state_dict() if k.endswith("weight"))  # the stem convolution
    ref = source.state_dict()[key]
    assert torch.equal(loaded.state_dict()[key], ref)
    assert not torch.equal(random.state_dict()[key], ref)


def test_missing_weight_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        create_backbone("test_resnet", str(tmp_path / "nope.pth"))


def test_bf16_encoder_runs_roi_align_in_fp32_and_matches_fp32() -> None:
    # A bf16 model (DeepSpeed's bf16 mode casts every weight) on a bf16 image: torchvision has no bf16
    # RoIAlign kernel, so without the fp32 cast this raises "roi_align_forward_kernel not implemented".
    torch.manual_seed(0)
    enc = VisualEncoder("test_resnet", embed_dim=8, roi_dim=6, roi_output_size=2).eval()
    enc_bf16 = VisualEncoder("test_resnet", embed_dim=8, roi_dim=6, roi_output_size=2).eval()
    enc_bf16.load_state_dict(enc.state_dict())
    enc_bf16.bfloat16()
    image = torch.rand(2, 3, 128, 96)
    boxes = torch.tensor([[[4.3, 9.7, 60.1, 90.2], [10.0, 20.0, 90.0, 120.0]]]).repeat(2, 1, 1)
    valid = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        glob, roi = enc(image, boxes, valid)
        glob16, roi16 = enc_bf16(image.bfloat16(), boxes, valid)
    assert glob16.dtype == roi16.dtype == torch.bfloat16, "outputs come back in the model dtype"
    assert boxes.dtype == torch.float32
    # bf16 keeps ~3 significant digits; through a ResNet and two MLPs the error stays a few percent of the scale.
    for ref, got in ((glob, glob16), (roi, roi16)):
        err = (got.float() - ref).abs().max() / ref.abs().max()
        assert err < 0.05, float(err)
    assert torch.all(roi16[0, 1] == 0)


def test_bf16_roi_pool_uses_unrounded_box_coordinates() -> None:
    enc = VisualEncoder("test_resnet", embed_dim=4, roi_dim=4, roi_output_size=7)
    # One channel holding (x index - 11): small values, so bf16 represents the pooled centre exactly.
    xs = torch.arange(24.0).view(1, 1, 1, 24).expand(1, 1, 4, 24) - 11.0
    fmap = xs.bfloat16()
    # x2 = 705 px is 704 in bf16 (spacing 4 above 512). Exact: centre (64 + 705) / 2 / 32 - 0.5 = 11.515625,
    # so the pooled value is 0.515625 (exact in bf16); rounded boxes would give 0.5.
    boxes = torch.tensor([[[64.0, 32.0, 705.0, 96.0]]])
    assert float(boxes.bfloat16()[0, 0, 2]) == 704.0
    pooled = enc.roi_pool([fmap], boxes)
    assert pooled.dtype == torch.bfloat16
    assert float(pooled[0, 0, 0]) == 0.515625


def test_multiscale_roi_sees_a_lesion_smaller_than_a_stride32_cell() -> None:
    torch.manual_seed(0)
    enc = VisualEncoder("test_resnet", embed_dim=4, roi_dim=4, roi_output_size=3, roi_levels=(8, 16, 32),
                        roi_pooling="flatten").eval()  # fmt: skip
    assert enc.roi_strides == [8, 16, 32] and enc.roi_in_dim == (48 + 192 + 96) * 9
    image = torch.rand(1, 3, 256, 256) * 0.1
    lesion = image.clone()
    lesion[:, :, 40:52, 40:52] += 1.0  # 12 px: well inside one 32 px cell
    # One box around the lesion, one in the far corner.
    boxes = torch.tensor([[[24.0, 24.0, 68.0, 68.0], [200.0, 200.0, 244.0, 244.0]]])
    with torch.no_grad():
        before = enc.roi_pool([enc.feature_maps(image)[i] for i in enc.roi_levels], boxes)
        after = enc.roi_pool([enc.feature_maps(lesion)[i] for i in enc.roi_levels], boxes)
    change = (after - before).abs()
    fine = slice(0, 48 * 9)  # the stride-8 block of the concatenated, flattened grid
    assert change[0, 0, fine].mean() > 0.05 * before[0, 0, fine].abs().mean()
    assert change[0, 1, fine].max() == 0.0  # the far box's stride-8 features are untouched
    assert change[0, 0].sum() > 100 * change[0, 1].sum()


def test_level_projection_keeps_a_flattened_grid_small() -> None:
    enc = VisualEncoder("resnet50", embed_dim=8, roi_dim=6, roi_output_size=7, roi_levels=(8, 16, 32),
                        roi_pooling="flatten", roi_level_dim=64).eval()  # fmt: skip
    assert enc.roi_in_dim == 3 * 64 * 49
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0]]])
    with torch.no_grad():
        _, roi = enc(torch.rand(1, 3, 64, 64), boxes, torch.ones(1, 1, dtype=torch.bool))
    assert roi.shape == (1, 1, 6)


def test_single_level_mean_pooling_is_the_original_head() -> None:
    enc = VisualEncoder("test_resnet", embed_dim=4, roi_dim=4, roi_output_size=7)
    assert enc.roi_strides == [32] and enc.roi_in_dim == enc.channels
    with pytest.raises(ValueError, match="feature strides"):
        VisualEncoder("test_resnet", embed_dim=4, roi_dim=4, roi_levels=(64,))
