"""The `full` profile reproduces every row of the official recipes (reference/recipes.md), and the smoke
profile scales them as documented."""
import pytest

from repnext.config import RunConfig
from repnext.profiles import SMOKE, get_profile
from repnext.recipes import RECIPES, get_recipe, recipe_table


def full(recipe: str, distillation: bool = False):
    return RunConfig(model="repnext_m1", recipe=recipe, profile="full", distillation=distillation).resolve()


def test_repvit_recipe_in_the_full_profile():
    s = full("repvit")
    r = s.recipe
    assert (s.img_size, s.batch_size, r.epochs, r.sched_epochs) == (224, 2048, 300, 300)
    assert s.lr == pytest.approx(4e-3)                        # 1e-3 x 2048 / 512
    assert full("repvit", distillation=True).batch_size == 1024
    assert full("repvit", distillation=True).lr == pytest.approx(2e-3)
    assert (r.opt, r.weight_decay, r.opt_eps) == ("adamw", 0.025, 1e-8)
    assert (r.warmup_epochs, r.warmup_lr, r.min_lr, r.lr_epoch_lag) == (5, 1e-6, 1e-5, 1)
    assert (r.clip_grad, r.clip_mode) == (0.02, "agc")
    assert r.ema_decay == 0.99996 and r.dist_bn == "broadcast"
    assert (r.auto_augment, r.color_jitter, r.train_interpolation, r.scale, r.hflip) == (
        "rand-m9-mstd0.5-inc1", 0.4, "bicubic", (0.08, 1.0), 0.5)
    assert (r.reprob, r.remode, r.recount, r.repeated_aug) == (0.25, "pixel", 1, 3)
    assert (r.mixup, r.cutmix, r.mixup_prob, r.mixup_switch_prob, r.mixup_mode, r.smoothing) == (
        0.8, 1.0, 1.0, 0.5, "batch", 0.1)
    assert (r.teacher, r.distill_alpha, r.distill_tau) == ("regnety_160", 0.5, 1.0)
    assert int(224 / r.eval_crop_pct) == 256 and r.eval_interpolation == "bicubic"
    assert s.seed == 0


def test_starnet_recipe_in_the_full_profile():
    s = full("starnet")
    r = s.recipe
    assert (s.img_size, s.batch_size, r.epochs, r.sched_epochs) == (224, 2048, 310, 300)  # 10 cooldown epochs
    assert s.lr == pytest.approx(3e-3)                        # not scaled
    assert full("starnet", distillation=True).batch_size == 1024
    assert full("starnet", distillation=True).lr == pytest.approx(3e-3)
    assert (r.opt, r.weight_decay, r.opt_eps) == ("adamw", 0.025, 1e-8)
    assert (r.warmup_epochs, r.warmup_lr, r.min_lr, r.lr_epoch_lag) == (5, 1e-5, 1e-6, 0)
    assert r.clip_grad is None and r.ema_decay is None and r.dist_bn == "reduce"
    assert (r.auto_augment, r.color_jitter, r.train_interpolation, r.scale, r.hflip) == (
        "rand-m1-mstd0.5-inc1", 0.0, "random", (0.08, 1.0), 0.5)
    assert (r.reprob, r.remode, r.recount, r.repeated_aug) == (0.25, "pixel", 1, 0)
    assert (r.mixup, r.cutmix, r.mixup_prob, r.mixup_switch_prob, r.mixup_mode, r.smoothing) == (
        0.8, 0.2, 1.0, 0.5, "batch", 0.1)
    assert (r.teacher, r.distill_alpha, r.distill_tau) == ("regnety_160", 0.5, 1.0)
    assert int(224 / r.eval_crop_pct) == 248
    assert s.seed == 42


def test_ablation_epochs_override_keeps_the_schedule_whole():
    s = RunConfig(model="convnext_femto", profile="full", epochs=120).resolve()
    assert (s.recipe.epochs, s.recipe.sched_epochs) == (120, 120)
    s = RunConfig(model="repnext_m0", recipe="starnet", profile="full", epochs=100).resolve()
    assert (s.recipe.epochs, s.recipe.sched_epochs) == (100, 90)


def test_with_epochs_keeps_the_cooldown_at_the_end():
    starnet, repvit = get_recipe("starnet"), get_recipe("repvit")
    assert (starnet.cooldown_epochs, repvit.cooldown_epochs) == (10, 0)
    assert [(r.epochs, r.sched_epochs) for r in (starnet.with_epochs(100), starnet.with_epochs(100, cooldown=3),
                                                 starnet.with_epochs(10), repvit.with_epochs(100, cooldown=3))] == [
        (100, 90), (100, 97), (10, 10), (100, 100)]  # no longer than the cooldown: all cosine; none to resize
    assert starnet.with_epochs(100).replace(epochs=310, sched_epochs=300) == starnet  # nothing else changes


def test_smoke_profile_scales_the_same_recipe():
    s = RunConfig(model="repnext_m0").resolve()
    assert (s.img_size, s.batch_size, s.recipe.epochs, s.data) == (32, SMOKE.batch_size, SMOKE.epochs, "digits")
    assert s.recipe.mixup == get_recipe("repvit").mixup  # augmentation as in the paper
    starnet = RunConfig(model="repnext_m0", recipe="starnet").resolve().recipe
    assert starnet.cooldown_epochs == SMOKE.cooldown_epochs == 1  # the cooldown survives, scaled


def test_run_id_is_stable_and_ignores_locations():
    a = RunConfig(model="repnext_m0", data_root="/a", workers=2)
    b = RunConfig(model="repnext_m0", data_root="/b", workers=8)
    assert a.run_id == b.run_id
    assert a.run_id != RunConfig(model="repnext_m0", distillation=True).run_id


def test_bad_names_are_named():
    with pytest.raises(ValueError, match="unknown recipe 'deit'"):
        get_recipe("deit")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge")
    with pytest.raises(ValueError, match="even"):
        RunConfig(model="repnext_m0", batch_size=7).resolve()
    with pytest.raises(ValueError, match="unknown recipe field"):
        RECIPES["repvit"].replace(learning_rate=1)


def test_recipe_table_lists_every_field():
    table = recipe_table()
    assert "| base_lr | 0.001 | 0.003 |" in table
    assert "| cutmix | 1.0 | 0.2 |" in table


def test_a_run_no_longer_than_its_warmup_skips_it():
    # smoke scales 120 epochs to 1: a warmup epoch would be the whole run, at the warmup lr
    one = RunConfig(model="repnext_m0", epochs=1).resolve().recipe
    assert (one.epochs, one.warmup_epochs) == (1, 0)
    assert RunConfig(model="repnext_m0", epochs=2).resolve().recipe.warmup_epochs == 1
    assert RunConfig(model="repnext_m0", profile="full").resolve().recipe.warmup_epochs == 5
