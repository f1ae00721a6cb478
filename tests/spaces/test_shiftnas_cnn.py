"""ShiftNAS CNN (BigNAS) space: extreme children against the reference's MAC counts, the resolution decision and
every consumer that takes it from the arch (export, train evaluator, supernet trainer, profile), bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nas.arch import Arch
from nas.errors import UserError
from nas.evaluate.data import Dataset, load_dataset
from nas.evaluate.metrics import count_macs, count_params
from nas.export import export
from nas.space import load_space, space_of
from nas.spaces.shiftnas_cnn import HEAD_WIDTHS, STAGES, STEM_WIDTHS, ShiftNASCNNSpace
from tests.oneshot.train_helpers import one_thread  # noqa: F401 (fixture)

# The reference's derived MACs (shared/reference/shiftnas.md, section 1: conv + SE + FC MACs, SE bottleneck
# make_divisible(hidden / 4, 8), no shortcut conv on first blocks), in millions, at 192..320 px; and our counts.
REFERENCE_MMACS = {"min": (208, 283, 368, 465, 573), "max": (674, 913, 1189, 1502, 1851)}
MEASURED = {"shiftnas_cnn_min": (5_498_072, 282_556_384), "shiftnas_cnn_max": (19_132_664, 912_871_456)}
NATIVE = {"resolution": 320, "num_classes": 1000}


@pytest.fixture(scope="module")
def space() -> ShiftNASCNNSpace:
    return load_space("shiftnas_cnn")


@pytest.fixture(scope="module")
def native() -> ShiftNASCNNSpace:
    return load_space("shiftnas_cnn", NATIVE)


def _forward(net: nn.Module, r: int, batch: int = 1) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(torch.zeros(batch, 3, r, r))


def _extreme(space: ShiftNASCNNSpace, pick, resolution: int) -> Arch:
    return space.make_arch({d.name: resolution if d.name == "resolution" else pick(d.choices)
                            for d in space.decisions()})


@pytest.mark.parametrize("name", list(MEASURED))
def test_presets_match_the_reference_macs(space, name):
    arch = space.preset(name)
    own = space_of(arch)
    assert (own.config.resolution, own.config.num_classes, own.input_resolution(arch)) == (320, 1000, 224)
    net = own.build(arch)
    params, macs = count_params(net), count_macs(net, (3, 224, 224))
    assert macs == pytest.approx(space.preset_spec(name).published["macs"], rel=0.02)
    assert (params, macs) == MEASURED[name]
    assert own.cost(arch) == {"params": params, "macs": macs}
    assert arch == _extreme(own, min if name.endswith("min") else max, 224)


def test_extremes_at_every_resolution_match_the_reference_table(native):
    for which, pick in (("min", min), ("max", max)):
        for r, want in zip(native.input_resolutions(), REFERENCE_MMACS[which], strict=True):
            macs = native.cost(_extreme(native, pick, r))["macs"]
            assert macs / 1e6 == pytest.approx(want, rel=0.005), (which, r, macs)


@pytest.mark.parametrize("name", list(MEASURED))
def test_presets_run_at_native_resolution(space, name):
    arch = space.preset(name)
    assert _forward(space_of(arch).build(arch), 224, batch=2).shape == (2, 1000)


@pytest.mark.parametrize("name", [*MEASURED, "shiftnas_cnn_tiny"])
def test_presets_run_at_demo_resolution(space, name):
    spec = space.preset_spec(name)
    for r in (24, 40):  # the demo space's smallest and largest resolution
        arch = space.make_arch({**spec.choices, "resolution": r})
        assert space.input_resolution(arch) == r
        assert _forward(space.build(arch), r).shape == (1, 10)


def test_decisions_resolutions_and_keys(space, native):
    names = [d.name for d in space.decisions()]
    assert names[:4] == ["resolution", "stem.width", "s1.width", "s1.depth"] and names[-1] == "head.width"
    assert len(names) == 2 + 2 * 7 + (3 + 4 + 6 + 6 + 2) + 1
    assert native.input_resolutions() == (192, 224, 256, 288, 320)
    assert space.input_resolutions() == (24, 28, 32, 36, 40)
    assert load_space("shiftnas_cnn", {"resolution": 32}).input_resolutions() == (19, 22, 26, 29, 32)
    # resolution, stem; per stage width x depth x kernel slots; head (inactive slots' kernels counted)
    assert space.size() == 5 * 2 * (2 * 2) * (2 * 2) * (2 * 2 * 2**3) * (2 * 3 * 2**4) * (3 * 5 * 2**6) * (
        4 * 5 * 2**6) * (5 * 2 * 2**2) * 17
    assert len(native.all_latency_keys()) == 1115
    keys = native.latency_keys(native.preset("shiftnas_cnn_min"))
    assert keys[0] == "stem-in224x224x3-out112x112x32-swish"
    assert keys[1] == "mbconv-in112x112x32-out112x112x16-k3-e1-s1-swish-se"
    assert keys[-1] == "head-in7x7x320-conv1280-out1000-swish"
    assert len(keys) == 1 + 12 + 1
    assert native.unit(keys[0]).input_shape == (3, 224, 224)


def test_every_width_and_kernel_choice_is_the_table(space):
    choices = {d.name: d.choices for d in space.decisions()}
    assert choices["stem.width"] == STEM_WIDTHS == (32, 40) and choices["head.width"] == HEAD_WIDTHS
    assert HEAD_WIDTHS[0] == 1280 and HEAD_WIDTHS[-1] == 1408 and len(HEAD_WIDTHS) == 17
    for s, stage in enumerate(STAGES, 1):
        assert choices[f"s{s}.width"] == stage.widths and choices[f"s{s}.depth"] == stage.depths
        assert (f"s{s}.b1.kernel" in choices) == (s >= 3)


def test_inactive_kernels_do_not_change_the_network(space):
    arch = space.make_arch({**space.preset("shiftnas_cnn_tiny").choices} | {"resolution": 40})
    other = space.make_arch({**arch.choices, "s5.b6.kernel": 5})  # stage 5 runs 2 of 6 slots
    assert other != arch and space.latency_keys(other) == space.latency_keys(arch)
    assert space.active_choices(other) == space.active_choices(arch)


def test_json_round_trip(space):
    arch = space.sample(np.random.default_rng(3))
    again = Arch.from_json(arch.to_json())
    assert again == arch and again.hash == arch.hash and space.input_resolution(again) == arch.choices["resolution"]


@pytest.mark.parametrize(("change", "needles"), [
    ({"s5.depth": 7}, ["'s5.depth'", "no choice 7", "allowed: 2, 3, 4, 5, 6"]),
    ({"s1.depth": 0}, ["'s1.depth'", "allowed: 1, 2"]),
    ({"resolution": 225}, ["'resolution'", "allowed: 24, 28, 32, 36, 40"]),
    ({"s6.width": 220}, ["'s6.width'", "allowed: 192, 200, 208, 216"]),
    ({"s3.b1.kernel": 7}, ["'s3.b1.kernel'", "allowed: 3, 5"]),
    ({"s5.depth": "4"}, ["'s5.depth'", "allowed: 2, 3, 4, 5, 6"]),
])
def test_bad_choice_is_one_line_naming_decision_and_allowed(space, change, needles):
    arch = space.preset("shiftnas_cnn_tiny")
    with pytest.raises(UserError) as err:
        space.make_arch({**arch.choices, "resolution": 32, **change})
    assert "\n" not in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_bad_config_is_one_line():
    with pytest.raises(UserError, match="resolution") as err:
        load_space("shiftnas_cnn", {"resolution": 16})
    assert "\n" not in str(err.value)


def test_another_space_takes_its_config_resolution():
    ofa = load_space("ofa_mbv3")
    arch = ofa.sample(np.random.default_rng(0))
    assert ofa.input_resolution(arch) == ofa.config.resolution and ofa.input_resolutions() == (ofa.config.resolution,)


def test_input_resolution_refuses_an_arch_of_another_config(space):
    arch = load_space("shiftnas_cnn", NATIVE).preset("shiftnas_cnn_min")
    with pytest.raises(UserError, match="belongs to space"):
        space.input_resolution(arch)


def test_supernet_slices_agree_at_every_resolution(space):
    torch.manual_seed(0)
    net = space.supernet().eval()
    rng = np.random.default_rng(0)
    for r in space.input_resolutions():
        arch = space.make_arch({**space.sample(rng).choices, "resolution": r})
        x = torch.randn(2, 3, r, r)
        with torch.no_grad():
            out = net(x, arch)
            built = space.build(arch).eval()
            built.load_state_dict(net.extract(arch).state_dict(), strict=True)
            assert (out - built(x)).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match=r"takes \(B, 3, 40, 40\), got \(2, 3, 32, 32\)"):
        net(torch.zeros(2, 3, 32, 32), space.make_arch({**arch.choices, "resolution": 40}))


def test_export_uses_the_arch_resolution(space, tmp_path):
    arch = space.make_arch({**space.preset("shiftnas_cnn_tiny").choices, "resolution": 28})
    results = export(arch, ["json", "pt", "torchscript", "onnx"], tmp_path)
    assert results["onnx"].max_abs_diff <= 1e-4 and results["torchscript"].max_abs_diff <= 1e-5
    dims = onnx.load(str(results["onnx"].path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 28, 28]
    assert Arch.from_json(results["json"].path.read_text()) == arch


def test_train_evaluator_feeds_each_arch_its_resolution(space, monkeypatch):
    from nas.evaluate import train
    from nas.evaluate.base import EvaluatorSpec, build_evaluator

    seen = []

    def fake_train(model, data, **kwargs):
        seen.append((data.x_train.shape[-2:], data.x_val.shape[-2:]))
        with torch.no_grad():
            model.eval()(data.x_val[:2])  # the network runs at the data's size
        return {"accuracy": 0.5, "train_loss": 1.0}

    monkeypatch.setattr(train, "train_and_evaluate", fake_train)
    evaluator = build_evaluator(EvaluatorSpec(space="shiftnas_cnn", space_config={}, evaluator="train", config={}))
    tiny = space.preset("shiftnas_cnn_tiny").choices
    for r in (24, 36):
        assert evaluator.evaluate(space.make_arch({**tiny, "resolution": r}))["accuracy"] == 0.5
    assert seen == [((24, 24), (24, 24)), ((36, 36), (36, 36))]
    data = load_dataset("digits", resolution=40)
    assert data.at_resolution(24) is data.at_resolution(24) and data.at_resolution(40) is data  # cached


def test_spos_trains_each_step_at_the_sampled_resolution(space):
    from nas.oneshot.base import Batch, build_method, parse_method_config

    method = build_method("spos", parse_method_config("spos", {"seed": 0, "batch_size": 4, "search_archs": 1}),
                          space)
    method.start(method.model, steps_per_epoch=4, total_steps=4)
    data = load_dataset("digits", resolution=space.config.resolution)
    seen: list[int] = []
    hook = method.supernet.stem.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    trained = set()
    for step in range(4):
        seen.clear()
        x, y = data.x_train[step * 4:(step + 1) * 4], data.y_train[step * 4:(step + 1) * 4]
        metrics = method.train_step(Batch(x, y, 0, lambda: (data.x_val[:4], data.y_val[:4])), step)
        assert np.isfinite(metrics["loss"])
        assert seen == [space.input_resolution(method.path(step))]  # the batch, loaded at 40 px, at the path's
        trained.add(seen[0])
    hook.remove()
    assert len(trained) >= 2, trained  # the paths' resolutions differ
    few = Dataset(data.name, data.x_train[:16], data.y_train[:16], data.x_val[:16], data.y_val[:16], 10)
    method.finish(few)  # scores an extracted net on the data at its resolution
    assert method.found_arch() is not None


def test_profile_times_each_arch_at_its_resolution(space, monkeypatch):
    from nas.hardware import profile as profiling

    shapes = []

    class Recorder:
        def time(self, module, input_shape, key=None, reference=None):
            shapes.append(input_shape)
            return type("T", (), {"mean_ms": 1.0})()

    archs = [space.make_arch({**space.preset("shiftnas_cnn_tiny").choices, "resolution": r}) for r in (24, 32)]
    profiling._time_archs(space, Recorder(), archs, None, "fit", None)
    assert shapes == [(3, 24, 24), (3, 32, 32)]
    assert {space.unit(k).input_shape for k in space.all_latency_keys() if k.startswith("stem")} == {
        (3, r, r) for r in space.input_resolutions()}


def test_yaml_defaults_are_the_demo_config(space):
    assert json.loads(json.dumps(space.config.model_dump())) == {"resolution": 40, "num_classes": 10, "dropout": 0.2}


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_supernet_training_and_evaluation_run_each_arch_at_its_resolution(space, tmp_path, monkeypatch):
    from nas.evaluate import train
    from nas.evaluate.base import EvaluatorSpec, build_evaluator
    from nas.oneshot.trainer import TrainRequest, train_supernet

    run_dir = tmp_path / "run"
    # workers 0: in this process (Ray Train's local mode); a Ray cluster would add its start, not a resolution.
    train_supernet(TrainRequest(space="shiftnas_cnn", method="spos", run_dir=run_dir, progress_every=1, workers=0,
                                method_config={"batch_size": 8, "epochs": 1, "max_steps_per_epoch": 6,
                                               "search_archs": 1, "seed": 1}))
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert len(progress) == 6 and all(np.isfinite(p["loss"]) for p in progress)
    seen = []
    real_accuracy = train.accuracy
    monkeypatch.setattr(train, "accuracy", lambda net, data, **kw: seen.append(data.x_val.shape[-1]) or
                        real_accuracy(net, data, **kw))
    evaluator = build_evaluator(EvaluatorSpec(space="shiftnas_cnn", space_config={}, evaluator="supernet",
                                              config={"checkpoint": str(run_dir), "bn_batches": 2}))
    tiny = space.preset("shiftnas_cnn_tiny").choices
    for r in (28, 40):
        assert 0.0 <= evaluator.evaluate(space.make_arch({**tiny, "resolution": r}))["accuracy"] <= 1.0
    assert seen == [28, 40]
