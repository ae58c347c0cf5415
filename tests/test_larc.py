"LARC against a plain step-by-step computation of apex's rule; scheduler interplay; exact resume from a state dict."
import copy
import math
import pytest
import torch
from stacvs.larc import LARC

LR, MOMENTUM, WD, TRUST = 0.1, 0.9, 0.05, 0.02


def _problem():
    "Three tensors: a random one, one that starts at zero (‖w‖ = 0), and one whose gradient is always zero."
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    c = torch.randn(5, generator=g, dtype=torch.float64)
    params = [torch.randn(4, generator=g, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
              torch.randn(3, generator=g, dtype=torch.float64)]

    def loss(ps): return ((A @ ps[0] - b) ** 2).sum() + ((ps[1] - c) ** 4).sum() + 0 * ps[2].sum()
    return params, loss


def _reference(params, loss, lrs, clip, eps=1e-8):
    "apex LARC around SGD(momentum, weight decay), written out per tensor with plain tensor arithmetic."
    w = [p.clone() for p in params]
    buffers = [None] * len(w)
    for lr in lrs:
        ws = [p.clone().requires_grad_() for p in w]
        grads = torch.autograd.grad(loss(ws), ws)
        for i, g in enumerate(grads):
            w_norm, g_norm = math.sqrt(float((w[i] ** 2).sum())), math.sqrt(float((g ** 2).sum()))
            if w_norm != 0 and g_norm != 0:
                local = TRUST * w_norm / (g_norm + WD * w_norm + eps)
                if clip: local = min(local / lr, 1.0)
                d = (g + WD * w[i]) * local
            else: d = g  # left as it is: no weight decay this step
            buffers[i] = d.clone() if buffers[i] is None else MOMENTUM * buffers[i] + d
            w[i] = w[i] - lr * buffers[i]
    return w


def _run_larc(params, loss, steps, clip, scheduler_T=None):
    ps = [p.clone().requires_grad_() for p in params]
    opt = LARC(torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, weight_decay=WD), trust_coefficient=TRUST, clip=clip)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, scheduler_T) if scheduler_T else None
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        loss(ps).backward()
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        assert opt.param_groups[0]['weight_decay'] == WD  # restored after each step
        if sched: sched.step()
    return [p.detach() for p in ps], lrs


@pytest.mark.parametrize('clip', [True, False])
def test_matches_plain_computation(clip):
    params, loss = _problem()
    got, lrs = _run_larc(params, loss, 6, clip)
    want = _reference(params, loss, lrs, clip)
    for g, w in zip(got, want): torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert torch.equal(got[2], params[2] * 1.0)  # zero gradient: no update and no weight decay at all
    assert got[1].abs().sum() > 0  # the zero tensor moved (plain step) and is adapted from the next step on


def test_clip_and_scale_modes_differ_and_clip_caps_at_lr():
    params, loss = _problem()
    clipped, _ = _run_larc(params, loss, 3, clip=True)
    scaled, _ = _run_larc(params, loss, 3, clip=False)
    assert not torch.allclose(clipped[0], scaled[0])
    # a tiny gradient: clip mode gives factor 1, i.e. exactly SGD with weight decay on that step
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    opt = LARC(torch.optim.SGD([w], lr=0.1, weight_decay=0.01))
    w.grad = torch.tensor([1e-6, 0.0])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * (torch.tensor([1e-6, 0.0]) + 0.01 * torch.tensor([3.0, 4.0])))


def test_cosine_scheduler_drives_the_shared_groups():
    params, loss = _problem()
    T = 5
    got, lrs = _run_larc(params, loss, T, clip=True, scheduler_T=T)
    expected_lrs = [LR * (1 + math.cos(math.pi * t / T)) / 2 for t in range(T)]
    assert lrs == pytest.approx(expected_lrs)
    want = _reference(params, loss, expected_lrs, clip=True)
    for g, w in zip(got, want): torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_param_groups_and_state_are_shared():
    w = torch.zeros(2, requires_grad=True)
    inner = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt = LARC(inner)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is inner.param_groups and opt.state is inner.state
    opt.param_groups[0]['lr'] = 0.5
    assert inner.param_groups[0]['lr'] == 0.5
    extra = torch.ones(3, requires_grad=True)
    opt.add_param_group({'params': [extra], 'lr': 0.2})
    assert len(inner.param_groups) == 2
    w.grad = torch.ones(2); extra.grad = torch.ones(3)
    opt.step()
    assert set(inner.state) == {w, extra} and 'momentum_buffer' in opt.state[w]
    opt.zero_grad()
    assert w.grad is None
    assert repr(opt).startswith('LARC(trust_coefficient=0.02, clip=True, eps=1e-08)') and 'SGD' in repr(opt)


def test_state_dict_round_trip_resumes_exactly():
    params, loss = _problem()

    def make(ps):
        opt = LARC(torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, weight_decay=WD))
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)

    def steps(ps, opt, sched, n):
        for _ in range(n):
            opt.zero_grad(); loss(ps).backward(); opt.step(); sched.step()

    ps = [p.clone().requires_grad_() for p in params]
    opt, sched = make(ps)
    steps(ps, opt, sched, 3)
    saved = dict(params=[p.detach().clone() for p in ps], opt=copy.deepcopy(opt.state_dict()),
                 sched=copy.deepcopy(sched.state_dict()))
    steps(ps, opt, sched, 4)

    fresh = [p.clone().requires_grad_() for p in saved['params']]
    opt2, sched2 = make(fresh)
    opt2.load_state_dict(saved['opt']); sched2.load_state_dict(saved['sched'])
    assert opt2.param_groups is opt2.optim.param_groups  # still shared after the inner optimizer replaced its lists
    assert opt2.param_groups[0]['lr'] == saved['opt']['param_groups'][0]['lr']
    steps(fresh, opt2, sched2, 4)
    for a, b in zip(ps, fresh): assert torch.equal(a.detach(), b.detach())
    assert opt.param_groups[0]['lr'] == opt2.param_groups[0]['lr']


def test_closure_and_bad_arguments():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = LARC(torch.optim.SGD([w], lr=0.1))

    def closure():
        opt.zero_grad(); l = (w ** 2).sum(); l.backward(); return l
    assert opt.step(closure).item() == pytest.approx(5.0)
    with pytest.raises(TypeError, match="LARC wraps an optimizer"): LARC([w])
    with pytest.raises(ValueError, match="trust_coefficient must be > 0"): LARC(torch.optim.SGD([w], lr=0.1), 0.0)
