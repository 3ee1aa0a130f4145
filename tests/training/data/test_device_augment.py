"""The GPU data path: parameters drawn as the PIL path draws them, pixels as torchvision computes them."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as F2

from dinofeat.training.config.train_config import resolve_config
from dinofeat.training.data import device_augment as da
from dinofeat.training.data.augment import MultiCropAugmentation
from dinofeat.training.engine.trainer import Trainer
from tests.helpers.training import TINY_TRAIN_OVERRIDES, make_image_folder


def _photo(seed: int = 0, size: tuple[int, int] = (61, 47)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 5, generator=g), size=size[::-1],
                                             mode="bilinear", align_corners=False)
    return TF.to_pil_image((smooth[0] * 255).to(torch.uint8))


def _uint8(seed: int, n: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 17, 19), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize(("ours", "theirs", "factors"), [
    (da.adjust_brightness, TF.adjust_brightness, (0.6, 1.0, 1.4)),
    (da.adjust_contrast, TF.adjust_contrast, (0.6, 1.0, 1.4)),
    (da.adjust_saturation, TF.adjust_saturation, (0.8, 1.0, 1.2)),
    (da.adjust_hue, TF.adjust_hue, (-0.1, 0.03, 0.1)),
])
def test_batched_colour_ops_equal_torchvision_per_image(ours, theirs, factors):
    images = _uint8(1)
    out = ours(images, torch.tensor(factors))
    for image, factor, mine in zip(images, factors, out, strict=True):
        reference = theirs(image, factor)
        assert (mine.int() - reference.int()).abs().max() <= 1  # hue: float rounding at sector edges


def test_greyscale_equals_torchvision():
    images = _uint8(2)
    assert torch.equal(da.gray_uint8(images), TF.rgb_to_grayscale(images, num_output_channels=3))


def test_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((2, 3, 20, 20), 77, dtype=torch.uint8)
    assert torch.equal(da.gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)
    noise = _uint8(3, n=2)
    blurred = da.gaussian_blur(noise, torch.tensor([0.1, 2.0]))
    assert (blurred[0].int() - noise[0].int()).abs().max() <= 1  # sigma 0.1: the identity, up to rounding
    assert blurred[1].float().std() < 0.5 * noise[1].float().std()


def _draw_both(seed: int, kinds, image):
    """Parameters (device path) and crops (PIL path) for the same per-sample seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        raw, params = da.MultiCropParams(kinds)(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        crops = MultiCropAugmentation(32, 16, local_crops_number=2)(image)
    return raw, params, crops


def test_both_paths_draw_the_same_random_decisions_and_make_close_crops():
    kinds = da.crop_kinds(32, 16, (0.4, 1.0), (0.05, 0.4), 2)
    image = _photo()
    gaps = []
    for seed in range(8):
        raw, params, crops = _draw_both(seed, kinds, image)
        assert torch.equal(raw, TF.pil_to_tensor(image))
        device_crops = da.DeviceMultiCrop(kinds, torch.device("cpu"))(da.PendingCrops([raw], params[None]))
        assert [tuple(c.shape[1:]) for c in device_crops] == [tuple(c.shape) for c in crops]
        gaps += [(mine[0] - theirs).abs().mean().item()
                 for mine, theirs in zip(device_crops, crops, strict=True)]
    # Same crop boxes, flips, jitter and choices: the pixels differ only by resampling and blur details.
    assert max(gaps) < 0.1, gaps  # normalised units (about 6 grey levels)


def test_identity_parameters_give_the_plain_resized_crop():
    kind = da.CropKind(16, (1.0, 1.0), 0.0, 0.0)
    image = _uint8(4, n=1)[0]
    params = torch.zeros(1, da.N_PARAMS, dtype=torch.float64)
    params[0, da.TOP:da.WIDTH + 1] = torch.tensor([0, 0, 17, 19])
    params[0, da.ORDER] = torch.arange(4, dtype=torch.float64)
    out = da.DeviceMultiCrop([kind], torch.device("cpu"), mean=(0, 0, 0), std=(1 / 255,) * 3)(
        da.PendingCrops([image], params[:, None]))[0]
    expected = F2.resize(image, [16, 16], interpolation=F2.InterpolationMode.BICUBIC, antialias=True)
    assert torch.equal(out[0], expected.float())


def test_a_batch_for_another_crop_list_is_refused():
    kinds = da.crop_kinds(32, 16, (0.4, 1.0), (0.05, 0.4), 2)
    pending = da.PendingCrops([_uint8(5, n=1)[0]], torch.zeros(1, 3, da.N_PARAMS, dtype=torch.float64))
    with pytest.raises(ValueError, match="parameters for 3 crops, expected 4"):
        da.DeviceMultiCrop(kinds, torch.device("cpu"))(pending)


def test_training_on_the_device_path_runs_and_resumes_exactly(tmp_path):
    data = make_image_folder(tmp_path / "images")

    def config(out):
        return resolve_config(overrides=[*TINY_TRAIN_OVERRIDES, f"data.path={data}", f"run.output_dir={out}",
                                         "data.augmentation=device"])

    full = Trainer(config(tmp_path / "full"))
    summary = full.fit()
    assert torch.isfinite(torch.tensor(summary["loss"]))
    part = Trainer(config(tmp_path / "part"))
    part.train_one_epoch(0)
    part.save_checkpoint(1)
    resumed = Trainer(config(tmp_path / "part"))
    resumed.fit()
    for key, value in full.student_module.state_dict().items():
        assert torch.equal(value, resumed.student_module.state_dict()[key]), key


def test_an_unknown_augmentation_path_is_refused():
    with pytest.raises(ValueError, match=r"data\.augmentation"):
        resolve_config(overrides=["data.augmentation=gpu"])


def test_the_device_path_refuses_multi_band_data():
    with pytest.raises(ValueError, match=r"data\.augmentation=device makes RGB crops"):
        resolve_config(overrides=["data.augmentation=device", "data.channels=5"])
