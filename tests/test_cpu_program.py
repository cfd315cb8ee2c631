"""CPU op programs (googlenet_fast/cpu_program.py): the fused model's CPU eval forward replayed
from a recorded list of ops, bit-identical to the module path, and never stale: every change the
module path would see makes the next forward take the modules again."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn

from googlenet_fast import GoogLeNet, cpu_program
from googlenet_fast.backends import native
from googlenet_fast.model import Inception
from model_helpers import OpLog, make_input, ours_from, rel_err, tv_model

pytestmark = pytest.mark.skipif(not native.available(), reason=f"extension not built: {native.LOAD_ERROR}")

SIZE = 40  # smallest sizes keep this file fast; the structure is that of 224 x 224


class Runs:
    """Counts program replays and module-path forwards of a model."""

    def __init__(self, monkeypatch):
        self.replays = 0
        self.modules = 0
        real_run, real_fwd = cpu_program.Program.run, GoogLeNet._forward_modules

        def run(prog, x):
            self.replays += 1
            return real_run(prog, x)

        def fwd(model, x):
            self.modules += 1
            return real_fwd(model, x)

        monkeypatch.setattr(cpu_program.Program, "run", run)
        monkeypatch.setattr(GoogLeNet, "_forward_modules", fwd)

    def take(self):
        r = (self.replays, self.modules)
        self.replays = self.modules = 0
        return r


@pytest.fixture
def runs(monkeypatch):
    return Runs(monkeypatch)


def fresh(seed=0, **kw):
    tv = tv_model(seed=seed, **kw)
    return tv, ours_from(tv)


def reference(model, x):
    """The module path of the same model, now (no program)."""
    with torch.no_grad():
        return GoogLeNet._forward_modules(model, x)


def call(model, x):
    with torch.no_grad():
        return model(x)


def test_replay_is_bit_identical_to_the_modules(runs):
    tv, ours = fresh()
    x = make_input(2, 3, SIZE, SIZE, seed=1)
    y0 = call(ours, x)  # cold caches: folds, no program
    y1 = call(ours, x)  # warm: records
    assert runs.take() == (0, 2)
    ys = [call(ours, x) for _ in range(3)]
    assert runs.take() == (3, 0)
    for y in [y1] + ys:
        assert torch.equal(y, y0)
    with torch.no_grad():
        assert rel_err(y0, tv(x)) <= 1e-4
    # another input of the same signature: the replay computes on it
    x2 = make_input(2, 3, SIZE, SIZE, seed=2)
    y2 = call(ours, x2)
    assert runs.take() == (1, 0)
    assert torch.equal(y2, reference(ours, x2))
    with torch.no_grad():
        assert rel_err(y2, tv(x2)) <= 1e-4 and not torch.equal(y2, y0)


def test_signatures_shapes_layouts_dtypes(runs):
    tv, ours = fresh()
    # cases.md strided-input: channels_last, every other row and column, a sliced last dim
    xs = [make_input(1, 3, SIZE, SIZE, seed=3), make_input(3, 3, SIZE + 8, SIZE, seed=4),
          make_input(1, 3, SIZE, SIZE, seed=5).contiguous(memory_format=torch.channels_last),
          make_input(1, 3, 2 * SIZE, 2 * SIZE, seed=6)[:, :, ::2, ::2],
          make_input(1, 3, SIZE, SIZE + 1, seed=7)[..., 1:]]
    for x in xs:
        for _ in range(3):
            call(ours, x)
    runs.take()
    for x in xs:
        y = call(ours, x)
        assert torch.equal(y, reference(ours, x))
        with torch.no_grad():
            assert rel_err(y, tv(x)) <= 1e-4
    assert runs.take() == (5, 5)  # each replayed (the references ran the modules)
    assert len(ours.__dict__[cpu_program.PROGRAMS_ATTR].by_sig) == 5
    ours64 = copy.deepcopy(ours).double()
    x64 = xs[0].double()
    for _ in range(3):
        y = call(ours64, x64)
    assert y.dtype == torch.float64 and torch.equal(y, reference(ours64, x64))


def warm(model, x):
    for _ in range(3):
        call(model, x)


CHANGES = {
    "bn running_var in place": lambda m: m.inception4b.branch2[1].bn.running_var.mul_(1.5),
    "conv weight in place": lambda m: m.conv2.conv.weight.mul_(-1),
    "fc bias in place": lambda m: m.fc.bias.add_(1.0),
    "load_state_dict": lambda m: m.load_state_dict(tv_model(seed=7).state_dict()),
    "param replaced": lambda m: setattr(m.inception3a.branch1.conv, "weight",
                                        nn.Parameter(m.inception3a.branch1.conv.weight.detach() * 2)),
    "module swapped": lambda m: setattr(m, "inception5b", ours_from(tv_model(seed=8)).inception5b),
    "bn eps": lambda m: setattr(m.conv3.bn, "eps", 0.5),
    "pool geometry": lambda m: setattr(m.maxpool3, "kernel_size", 2),
    "transform_input": lambda m: setattr(m, "transform_input", True),
    "clear_folded_cache": lambda m: m.clear_folded_cache(),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_changes_are_never_stale(name, runs):
    _, ours = fresh()
    x = make_input(2, 3, SIZE, SIZE, seed=9)
    warm(ours, x)
    runs.take()
    before = call(ours, x)
    assert runs.take() == (1, 0)
    with torch.no_grad():
        CHANGES[name](ours)
    ref = reference(ours, x)  # what the modules compute now (folds afresh where needed)
    y = call(ours, x)
    assert torch.equal(y, ref)
    if name != "clear_folded_cache":
        assert not torch.equal(y, before), "the change must matter for this test to mean anything"
    # and it records again: later calls replay the new state
    warm(ours, x)
    runs.take()
    assert torch.equal(call(ours, x), ref)
    assert runs.take() == (1, 0)


def test_hooks_fire_and_modes_are_honoured(runs):
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=10)
    warm(ours, x)
    runs.take()
    seen = []
    h = ours.inception4a.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    call(ours, x)
    assert len(seen) == 1 and runs.take()[0] == 0
    h.remove()
    g = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m)))
    try:
        call(ours, x)
        assert len(seen) > 10 and runs.take()[0] == 0
    finally:
        g.remove()
    # one submodule in train mode: the module path (its BatchNorm updates running statistics)
    ours.inception3b.train()
    before = ours.inception3b.branch1.bn.running_mean.clone()
    call(ours, x)
    assert runs.take()[0] == 0
    assert not torch.equal(before, ours.inception3b.branch1.bn.running_mean)
    ours.inception3b.eval()
    # fused switched off: the plain modules
    ours.fused = False
    call(ours, x)
    assert runs.take()[0] == 0
    ours.fused = True


def test_grad_autocast_and_dispatch_modes(runs):
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=11)
    warm(ours, x)
    runs.take()
    # grad enabled with parameters requiring grad: gradients must reach them (no replay)
    y = ours(x)
    assert runs.take()[0] == 0 and y.requires_grad
    y.sum().backward()
    assert ours.inception4c.branch3[1].conv.weight.grad is not None
    # autocast: another program (bfloat16), not the float32 one
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(3):
            yb = ours(x)
    assert yb.dtype == torch.bfloat16
    assert runs.take()[0] == 1
    assert call(ours, x).dtype == torch.float32


    runs.take()
    with torch.no_grad(), OpLog() as mode:
        ours(x)
    assert runs.take()[0] == 0  # an active mode sees the modules' ops
    assert mode.names.count("googlenet_fast.inception") == 9


@pytest.mark.parametrize("case", ["grad", "grad_first", "hook", "global_hook", "verify", "verify_instance"])
def test_ruled_out_forwards_do_not_take_the_model_state(case, runs, monkeypatch):
    """Eval forwards that cannot replay (autograd history, hooks, content checks) run the modules
    without taking the model's state first (~1 ms on a 2-core CPU: every eval forward with
    gradients enabled paid it), before a program exists and after; results as the modules'."""
    from googlenet_fast import model_state
    from googlenet_fast.model import BasicConv2d
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=14)
    if case != "grad_first":
        warm(ours, x)  # a program exists for x's signature
    taken = []
    real_init = model_state.ModelState.__init__
    monkeypatch.setattr(model_state.ModelState, "__init__", lambda self, m: taken.append(1) or real_init(self, m))
    seen = []
    handle = None
    if case == "hook":
        handle = ours.conv2.register_forward_pre_hook(lambda m, i: seen.append(1))
    elif case == "global_hook":
        handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(1))
    elif case == "verify":  # switched on after the recording: the program must not bypass it
        monkeypatch.setattr(Inception, "verify_folded_cache", True)
        monkeypatch.setattr(BasicConv2d, "verify_folded_cache", True)
    elif case == "verify_instance":
        ours.inception4a.verify_folded_cache = True
    try:
        runs.take()
        grad = case.startswith("grad")
        for _ in range(3):
            with torch.set_grad_enabled(grad):
                y = ours(x)
        assert runs.take() == (0, 3)
        assert taken == []
        assert y.requires_grad == grad
        assert torch.equal(y.detach(), reference(ours, x))
        if case in ("hook", "global_hook"):
            assert seen
    finally:
        if handle is not None:
            handle.remove()


def test_bad_inputs_still_raise_after_a_program_exists(runs):
    """GoogLeNet.forward asks for a program before its input checks (cpu_program.replay): no
    program may answer an input the checks would refuse."""
    from googlenet_fast.model import InputShapeError, InputTypeError
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=15)
    warm(ours, x)
    assert runs.take()[0] >= 1  # a program exists and replays
    with pytest.raises(InputTypeError, match="expected dtype torch.float32"):
        call(ours, x.double())
    with pytest.raises(InputTypeError, match="floating-point"):
        call(ours, x.to(torch.int32))
    with pytest.raises(InputShapeError, match="3 input channels"):
        call(ours, make_input(1, 1, SIZE, SIZE))
    with pytest.raises(InputShapeError, match="4-D"):
        call(ours, x[0])
    ours.double()  # the parameters' dtype changed: the float32 input no longer fits
    with pytest.raises(InputTypeError, match="expected dtype torch.float64"):
        call(ours, x)
    assert runs.take()[0] == 0


@pytest.mark.parametrize("where", ["inception5b", "inception4a.branch1", "conv2", "conv2.bn"])
def test_forward_patched_on_an_instance_runs(where, runs):
    """A forward set on a module instance after a program was recorded (found by a stress test:
    the replay ignored a patched inception5b.forward, rel. error 1.0), or on an inner module the
    fused paths compute themselves: the modules run, the patch with them."""
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=16)
    warm(ours, x)
    before = call(ours, x)
    mod = ours.get_submodule(where)
    real = mod.forward
    mod.forward = lambda t: real(t) * 0.5
    runs.take()
    got = call(ours, x)
    assert runs.take()[0] == 0
    ours.fused = False
    want = call(ours, x)
    ours.fused = True
    assert rel_err(want, before) > 1e-2  # the patch changes the logits
    assert rel_err(got, want) <= 1e-4
    del mod.forward  # back to the class's forward: replays again, as before
    warm(ours, x)
    assert runs.take()[0] >= 1 and torch.equal(call(ours, x), before)


def test_copies_and_pickles_leave_the_programs_behind(runs):
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=12)
    warm(ours, x)
    assert cpu_program.PROGRAMS_ATTR in ours.__dict__
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert cpu_program.PROGRAMS_ATTR not in clone.__dict__
        assert torch.equal(call(clone, x), call(ours, x))
    ours.double()
    assert cpu_program.PROGRAMS_ATTR not in ours.__dict__


def test_unrecordable_forward_is_not_retried(runs, monkeypatch):
    """A forward that calls .item() (data-dependent Python) gives no program, and later calls do
    not pay for recording again."""
    _, ours = fresh()
    x = make_input(1, 3, SIZE, SIZE, seed=13)
    real = Inception.forward

    def forward(self, t):
        if self is ours.inception4d:
            float(t.abs().max())  # a data-dependent read (aten._local_scalar_dense)
        return real(self, t)

    monkeypatch.setattr(Inception, "forward", forward)
    warm(ours, x)
    progs = ours.__dict__[cpu_program.PROGRAMS_ATTR]
    assert list(progs.by_sig.values()) == [None]
    recorded = []
    monkeypatch.setattr(cpu_program, "_Recorder", lambda x: recorded.append(1))
    call(ours, x)
    assert recorded == [] and runs.take()[0] == 0


def test_many_signatures_keep_their_programs_least_recently_used_dropped(monkeypatch, runs):
    """Past MAX_PROGRAMS signatures the least recently used program is dropped, not all of them
    (a server cycling through more batch sizes than the limit re-recorded on every call)."""
    from googlenet_fast import model_state
    monkeypatch.setattr(model_state, "MAX_PROGRAMS", 3)
    _, ours = fresh()
    xs = [make_input(1, 3, SIZE + 8 * i, SIZE, seed=40 + i) for i in range(4)]
    for x in xs[:3]:
        for _ in range(2):
            call(ours, x)  # fold, then record
    progs = ours.__dict__[cpu_program.PROGRAMS_ATTR]
    assert list(progs.by_sig) == [cpu_program._key(x) for x in xs[:3]]
    runs.take()
    call(ours, xs[0])  # a replay: xs[0] becomes the most recently used
    assert runs.take() == (1, 0)
    call(ours, xs[3])  # recorded: the least recently used (xs[1]) made room
    assert ours.__dict__[cpu_program.PROGRAMS_ATTR] is progs
    assert list(progs.by_sig) == [cpu_program._key(x) for x in (xs[2], xs[0], xs[3])]
    runs.take()
    for x in (xs[0], xs[2], xs[3]):
        assert torch.equal(call(ours, x), reference(ours, x))
    assert runs.take() == (3, 3)  # each replayed (the references ran the modules)


# ---- the C++ replay (csrc/program_run.cpp) --------------------------------------------------

def _program_of(model):
    progs = model.__dict__[cpu_program.PROGRAMS_ATTR].by_sig
    return list(progs.values())[-1]


@pytest.mark.parametrize("dtype, autocast", [(torch.float32, False), (torch.bfloat16, False),
                                             (torch.float32, True), (torch.float64, False)])
def test_cpp_replay_equals_the_python_replay(dtype, autocast, monkeypatch):
    """The fused model's programs replay in C++ (every step a positional call), with the bits of
    the Python loop and of the modules, including under autocast (the dispatcher's autocast
    keys apply to both replays alike)."""
    tv, ours = fresh()
    ours = ours.to(dtype)
    x = make_input(2, 3, SIZE, SIZE, seed=11, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        warm(ours, x)
        prog = _program_of(ours)
        assert prog.cpp is not None and len(prog.steps) >= 15  # (float64, autocast: some ATen ops)
        y_cpp = call(ours, x)
        monkeypatch.setattr(cpu_program, "CPP_REPLAY", False)
        y_py = call(ours, x)
        y_mod = reference(ours, x)
    assert y_cpp.dtype == y_py.dtype and torch.equal(y_cpp, y_py) and torch.equal(y_cpp, y_mod)
    with torch.no_grad():
        ref = tv.double()(x.double()).to(y_cpp.dtype)
    assert rel_err(y_cpp.float(), ref.float()) <= (1e-4 if dtype != torch.bfloat16 and not autocast else 0.1)


def test_cpp_replay_for_every_input_layout_and_concurrent_threads():
    """An NCHW input's program starts with a clone to channels_last (a memory_format keyword):
    replayed in C++ too.  The C++ replay runs without the GIL: three threads replaying programs of
    several signatures at once give the bits of the sequential calls."""
    import random
    import threading
    _, ours = fresh()
    xs = [make_input(b, 3, SIZE, SIZE, seed=20 + b) for b in (1, 2)]
    xs += [x.contiguous(memory_format=torch.channels_last) for x in xs]
    for x in xs:
        warm(ours, x)
    progs = ours.__dict__[cpu_program.PROGRAMS_ATTR].by_sig
    assert len(progs) == 4 and all(p is not None and p.cpp is not None for p in progs.values())
    refs = [call(ours, x) for x in xs]
    mismatches, errors = [], []

    def work(k):
        try:
            r = random.Random(k)
            for _ in range(12):
                j = r.randrange(len(xs))
                if not torch.equal(call(ours, xs[j]), refs[j]):
                    mismatches.append(j)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches, (errors, mismatches)


def _aten_step(op, template, slots, outs, kwargs=None):
    return (op, tuple(template), tuple(slots), (), kwargs or {}, tuple(outs), False)


def test_cpp_replay_fills_schema_defaults_and_frees():
    """A program of ATen ops: constants converted once, omitted trailing arguments take the
    schema's defaults (add's alpha=1), each step's outputs go to their slots."""
    aten = torch.ops.aten
    c = torch.tensor([1.0, 2.0, 3.0])
    steps = (_aten_step(aten.mul.Tensor, [None, c], [(0, 0)], [1]),          # x * c
             _aten_step(aten.add.Tensor, [None, None], [(0, 1), (1, 0)], [2]),  # x*c + x
             _aten_step(aten.clamp_min.default, [None, 0.5], [(0, 2)], [3]))
    prog = cpu_program.Program(4, steps, 3)
    assert [s[-1] for s in prog.steps] == [(), (1,), (2,)]  # each intermediate released after its last use
    assert prog.cpp is not None
    x = torch.tensor([-2.0, 0.25, 4.0])
    assert torch.equal(prog.run(x), torch.clamp_min(x * c + x, 0.5))
    assert torch.equal(prog.run(-x), torch.clamp_min(-x * c - x, 0.5))  # the constant is reused, not consumed
    # keyword arguments in their schema places (autocast's casts are recorded so), int lists, dtypes
    kw = (_aten_step(aten.add.Tensor, [None, c], [(0, 0)], [1], {"alpha": 2}),
          _aten_step(aten._to_copy.default, [None], [(0, 1)], [2], {"dtype": torch.float64}),
          _aten_step(aten.sum.dim_IntList, [None, [0], True], [(0, 2)], [3]))
    prog = cpu_program.Program(4, kw, 3)
    assert prog.cpp is not None
    y = prog.run(x)
    assert y.dtype == torch.float64 and torch.equal(y, (x + 2 * c).double().sum([0], True))


def test_cpp_replay_declines_what_it_cannot_take():
    """Tensor lists, keyword arguments, string arguments, unknown ops: no C++ program (None),
    the Python loop replays them."""
    aten = torch.ops.aten
    t = torch.ones(2)
    make = native._C._program_make
    with_list = (aten.cat.default, (None,), (), ((0, ((None, 0), (t, None))),), {}, (1,), False, ())
    assert cpu_program._cpp_program(2, (with_list,), 1) is None
    unknown_kwarg = (aten.add.Tensor, (None, t), ((0, 0),), (), {"beta": 2}, (1,), False, ())
    assert cpu_program._cpp_program(2, (unknown_kwarg,), 1) is None
    assert make(2, 1, (("aten::div", "Tensor_mode", (t, t, "floor"), (), (1,), False, ()),)) is None
    assert make(2, 1, (("googlenet_fast::no_such_op", "", (t,), (), (1,), False, ()),)) is None
    assert make(2, 1, (("aten::add", "Tensor", (t, t), ((0, 5),), (1,), False, ()),)) is None  # slot out of range
    assert make(2, 1, (("aten::add", "Tensor", (t,), (), (1,), False, ()),)) is None  # `other` has no default
    assert make(2, 1, (("aten::add", "Tensor", (t, t), ((2 ** 70, 0),), (1,), False, ()),)) is None  # no int64
    assert make(2, 1, (("aten::add", "Tensor", (t, t), (), (2 ** 70,), False, ()),)) is None
    with pytest.raises(ValueError, match="out < nslots"):
        make(2, 2, ())
    with pytest.raises(ValueError, match="out < nslots"):
        make(2 ** 70, 0, ())
    with pytest.raises(TypeError, match="_program_run"):
        native._C._program_run(object(), t)


def test_cpp_replay_error_raises_and_restores_prepacking():
    """An op failing inside the C++ replay raises the Python exception torch raises for it (the
    GIL taken back), and this thread's prepacking setting is the one before the run."""
    aten = torch.ops.aten
    w = torch.ones(3, 4)
    step = (aten.mm.default, (None, w), ((0, 0),), (), {}, (1,), True)
    prog = cpu_program.Program(2, (step,), 1)
    assert prog.cpp is not None
    assert torch.equal(prog.run(torch.ones(2, 3)), torch.full((2, 4), 3.0))
    before = native._C._set_weight_prepacking(False)
    try:
        with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
            prog.run(torch.ones(2, 5))
        assert native._C._set_weight_prepacking(False) is False  # still this thread's setting
        native._C._set_weight_prepacking(True)
        prog.run(torch.ones(2, 3))
        assert native._C._set_weight_prepacking(True) is True
    finally:
        native._C._set_weight_prepacking(before)
