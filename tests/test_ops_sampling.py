"""Pixel-adaptive sampling ops (TPAMI Eq. 1-7) against loops, torch's own samplers and exact enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference import bilinear_sample
from torch.profiler import ProfilerActivity, profile

from adeblur.ops import (
    PolicyHead,
    SkipMerge,
    bernoulli_log_prob,
    coords_to_pixel_index,
    grid_coords,
    leave_one_out_baseline,
    pixel_index_to_coords,
    pixel_index_to_mask,
    plackett_luce_log_prob,
    policy_gradient_loss,
    sample_at_coords,
    sample_at_coords_macs,
    sample_bernoulli,
    sample_exact_k,
    sampling_reward,
    scatter_to_grid,
    scatter_to_grid_macs,
    select_top_k,
    skip_merge,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to_pixels(coords: torch.Tensor, height: int, width: int) -> tuple[list[list[float]], list[list[float]]]:
    """Normalised (x, y) -> pixel units, by the align_corners=False formula."""
    xs = (((coords[..., 0].double() + 1) * width - 1) / 2).tolist()
    ys = (((coords[..., 1].double() + 1) * height - 1) / 2).tolist()
    return xs, ys


def _off_centre_coords(batch: int, num: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Random coords at least 0.1 px from any pixel centre row / column (finite differences stay in one cell)."""
    pixels = torch.rand(batch, num, 2, generator=generator, dtype=torch.float64)
    pixels = pixels * torch.tensor([width + 1.0, height + 1.0], dtype=torch.float64) - 1.0  # reaches outside
    fraction = pixels - pixels.floor()
    pixels = pixels.floor() + 0.1 + 0.8 * fraction
    size = torch.tensor([width, height], dtype=torch.float64)
    return (2 * pixels + 1) / size - 1


def reference_sample(features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """S(X, G) one value at a time: bilinear read with zeros outside."""
    batch, channels, height, width = features.shape
    xs, ys = _to_pixels(coords, height, width)
    out = torch.zeros(batch, channels, coords.shape[1], dtype=torch.float64)
    for b in range(batch):
        for c in range(channels):
            image = features[b, c].double().tolist()
            for k in range(coords.shape[1]):
                out[b, c, k] = bilinear_sample(image, ys[b][k], xs[b][k])
    return out


def reference_scatter(values: torch.Tensor, coords: torch.Tensor, height: int, width: int):
    """Normalised bilinear splat one sample and corner at a time."""
    batch, channels, num = values.shape
    xs, ys = _to_pixels(coords, height, width)
    numerator = torch.zeros(batch, channels, height, width, dtype=torch.float64)
    weight = torch.zeros(batch, 1, height, width, dtype=torch.float64)
    for b in range(batch):
        for k in range(num):
            x, y = xs[b][k], ys[b][k]
            x0, y0 = math.floor(x), math.floor(y)
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    if 0 <= yy < height and 0 <= xx < width:
                        numerator[b, :, yy, xx] += wy * wx * values[b, :, k].double()
                        weight[b, 0, yy, xx] += wy * wx
    grid = torch.where(weight > 0, numerator / weight.clamp_min(1e-300), torch.zeros(()))
    return grid, weight.clamp(max=1)


# ----------------------------------------------------------------------------------------------- coordinates


def test_coordinates_convention_and_inverse():
    height, width = 5, 7
    index = torch.randperm(height * width, generator=_generator(0))[:12].view(2, 6)
    coords = pixel_index_to_coords(index, (height, width), dtype=torch.float64)
    for b in range(2):
        for k in range(6):
            y, x = divmod(int(index[b, k]), width)
            assert coords[b, k].tolist() == pytest.approx([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1])
    assert torch.equal(coords_to_pixel_index(coords, (height, width)), index)
    assert torch.equal(coords_to_pixel_index(coords.float() + 0.04, (height, width)), index)  # < half a pixel
    assert torch.equal(
        grid_coords(height, width, batch_size=2), pixel_index_to_coords(torch.arange(35).repeat(2, 1), (5, 7))
    )
    # the same coordinates address the same point of a map of another resolution
    double = pixel_index_to_coords(
        torch.tensor([[0]]), (4, 4)
    )  # pixel (0, 0) of 4x4 = corner point of 2x2's first pixel
    assert _to_pixels(double, 2, 2) == ([[-0.25]], [[-0.25]])
    mask = pixel_index_to_mask(index, (height, width))
    assert mask.shape == (2, 1, height, width) and mask.sum() == 12
    assert all(mask.flatten(1)[b, index[b]].eq(1).all() for b in range(2))


# --------------------------------------------------------------------------------------- sampling operator


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("snap", [0.0, 1e-3])
def test_sample_matches_loop_reference(snap, memory_format):
    generator = _generator(1)
    features = torch.randn(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    features = features.contiguous(memory_format=memory_format)
    coords = torch.rand(2, 9, 2, generator=generator, dtype=torch.float64) * 2.6 - 1.3  # some outside
    coords[0, 0] = torch.tensor([1.0 / 6 - 1, 1.0 / 5 - 1], dtype=torch.float64)  # pixel (0, 0)
    coords[1, 1] = torch.tensor([2.0, 0.0], dtype=torch.float64)  # far outside: reads 0
    out = sample_at_coords(features, coords, snap=snap)
    assert out.shape == (2, 3, 9)
    torch.testing.assert_close(out, reference_sample(features, coords), rtol=0, atol=1e-12)


def test_sample_matches_grid_sample_and_bilinear_resize():
    generator = _generator(2)
    features = torch.rand(3, 4, 9, 11, generator=generator)
    coords = torch.rand(3, 40, 2, generator=generator) * 2.4 - 1.2
    expected = F.grid_sample(features, coords[:, None], mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(sample_at_coords(features, coords, snap=0.0), expected[:, :, 0], rtol=0, atol=1e-6)
    # uniform sampling at half resolution = bilinear resize (align_corners=False) = 2x2 average
    features = torch.rand(2, 3, 8, 12, generator=generator)
    sampled = sample_at_coords(features, grid_coords(4, 6, batch_size=2)).reshape(2, 3, 4, 6)
    torch.testing.assert_close(sampled, F.interpolate(features, (4, 6), mode="bilinear", align_corners=False))
    torch.testing.assert_close(sampled, F.avg_pool2d(features, 2))
    # channels_last input: same values
    channels_last = features.to(memory_format=torch.channels_last)
    coords = grid_coords(3, 5, batch_size=2) * 0.9
    assert torch.equal(sample_at_coords(channels_last, coords), sample_at_coords(features, coords))


def test_snap_reads_the_pixel_exactly():
    features = torch.rand(1, 2, 37, 53, generator=_generator(3))
    index = torch.tensor([[0, 52, 600, 37 * 53 - 1]])
    coords = pixel_index_to_coords(index, (37, 53))  # float32: ~1e-6 px off the centres
    exact = features.flatten(2)[:, :, index[0]]
    assert torch.equal(sample_at_coords(features, coords), exact)
    nudged = coords + torch.tensor([0.5e-3 * 2 / 53, -0.5e-3 * 2 / 37])  # 0.5e-3 px away: still snapped
    assert torch.equal(sample_at_coords(features, nudged), exact)
    assert not torch.equal(sample_at_coords(features, nudged, snap=0.0), exact)
    far = coords + torch.tensor([0.01 * 2 / 53, 0.0])  # 0.01 px: a real bilinear read
    assert not torch.equal(sample_at_coords(features, far), exact)


def test_sample_gradcheck():
    generator = _generator(4)
    features = torch.randn(2, 2, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    coords = _off_centre_coords(2, 6, 4, 5, generator).requires_grad_()
    assert torch.autograd.gradcheck(sample_at_coords, (features, coords))
    channels_last = features.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(sample_at_coords, (channels_last, coords))
    # at pixel centres (snapped) the features' gradient is exact and the coordinates' one-sided
    centres = pixel_index_to_coords(torch.tensor([[0, 7], [3, 19]]), (4, 5), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: sample_at_coords(f, centres), (features,))
    centres.requires_grad_()
    sample_at_coords(features.detach(), centres)[0, 0, 1].backward()
    pixel = features.detach()[0, 0]  # pixel (x=2, y=1): d/dx_px = right neighbour - itself, in normalised units
    assert float(centres.grad[0, 1, 0]) == pytest.approx(float(pixel[1, 3] - pixel[1, 2]) * 5 / 2)


# ------------------------------------------------------------------------------------------------- inverse


def test_scatter_matches_loop_reference():
    generator = _generator(5)
    values = torch.randn(2, 3, 10, generator=generator, dtype=torch.float64)
    coords = torch.rand(2, 10, 2, generator=generator, dtype=torch.float64) * 2.4 - 1.2
    coords[0, 1] = coords[0, 0]  # a collision
    grid, coverage = scatter_to_grid(values, coords, (4, 6))
    expected_grid, expected_coverage = reference_scatter(values, coords, 4, 6)
    torch.testing.assert_close(grid, expected_grid, rtol=0, atol=1e-12)
    torch.testing.assert_close(coverage, expected_coverage, rtol=0, atol=1e-12)
    assert (coverage == 0).any() and (coverage == 1).any()  # the test covers empty and saturated pixels


def test_collisions_average():
    coords = pixel_index_to_coords(torch.tensor([[4, 4, 4, 1]]), (3, 3))
    values = torch.tensor([[[1.0, 2.0, 6.0, 5.0]]])
    grid, coverage = scatter_to_grid(values, coords, (3, 3))
    assert grid.flatten().tolist() == [0, 5, 0, 0, 3, 0, 0, 0, 0]
    assert coverage.flatten().tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(7, 9), (37, 53), (64, 48)])
def test_round_trip_is_exact_on_sampled_pixels(device, size):
    height, width = size
    generator = _generator(6)
    features = torch.rand(2, 5, height, width, generator=generator).to(device)
    index = torch.stack([torch.randperm(height * width, generator=generator)[:20] for _ in range(2)]).to(device)
    coords = pixel_index_to_coords(index, size)
    grid, coverage = scatter_to_grid(sample_at_coords(features, coords), coords, size)
    mask = pixel_index_to_mask(index, size)
    assert torch.equal(coverage, mask)
    assert torch.equal(grid * mask, features * mask)
    assert torch.equal(grid * (1 - mask), torch.zeros_like(grid))
    skip = torch.rand(2, 5, height, width, generator=generator).to(device)
    assert torch.equal(skip_merge(grid, coverage, skip), torch.where(mask.bool(), features, skip))


def test_scatter_gradcheck():
    generator = _generator(7)
    values = torch.randn(2, 2, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    coords = _off_centre_coords(2, 5, 3, 4, generator).requires_grad_()
    skip = torch.randn(2, 2, 3, 4, generator=generator, dtype=torch.float64, requires_grad=True)

    def merged(values, coords, skip):
        grid, coverage = scatter_to_grid(values, coords, (3, 4))
        return skip_merge(grid, coverage, skip)

    assert torch.autograd.gradcheck(merged, (values, coords, skip))
    assert torch.autograd.gradcheck(lambda v, c: scatter_to_grid(v, c, (3, 4))[0], (values, coords))


def test_cost_is_linear_in_samples_not_hw_times_k():
    """No single allocation near H*W x K elements (134 M here, 512 MiB in float32)."""
    generator = _generator(8)
    features = torch.rand(1, 2, 512, 512, generator=generator, requires_grad=True)
    coords = torch.rand(1, 512, 2, generator=generator) * 2 - 1
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        grid, coverage = scatter_to_grid(sample_at_coords(features, coords), coords, (512, 512))
        (grid.sum() + coverage.sum()).backward()
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= 4 * 512 * 512 * 4  # the (H*W, C + 1) accumulator and features-sized gradients
    assert sample_at_coords_macs(2, 512) == 4 * 2 * 512
    assert scatter_to_grid_macs(2, 512, 512 * 512) == 4 * 3 * 512 + 2 * 512 * 512


def test_skip_merge_module():
    merge = SkipMerge(3, kernel_size=3)
    generator = _generator(9)
    scattered, skip = torch.rand(2, 2, 3, 4, 5, generator=generator)
    coverage = torch.rand(2, 1, 4, 5, generator=generator)
    expected = merge.conv(coverage * scattered + (1 - coverage) * skip)
    torch.testing.assert_close(merge(scattered, coverage, skip), expected)


# ------------------------------------------------------------------------------------------------- selection


def test_policy_head():
    head = PolicyHead(6, hidden_channels=8, num_layers=3)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(6, 8), (8, 8), (8, 1)]
    x = torch.rand(2, 6, 10, 12, generator=_generator(10))
    logits = head(x)
    assert logits.shape == (2, 1, 10, 12) and torch.equal(logits, torch.zeros_like(logits))
    logits.sum().backward()
    assert convs[-1].weight.grad.abs().sum() > 0
    assert PolicyHead(3, num_layers=1)(torch.rand(1, 3, 4, 4)).shape == (1, 1, 4, 4)


def test_top_k_picks_the_largest():
    logits = torch.randn(3, 1, 6, 7, generator=_generator(11))
    index = select_top_k(logits, 10)
    for b in range(3):
        values = logits[b].flatten().tolist()
        expected = sorted(range(42), key=lambda i: -values[i])[:10]
        assert index[b].tolist() == expected


def _plackett_luce_probability(weights: list[float], order: tuple[int, ...]) -> float:
    probability, remaining = 1.0, sum(weights)
    for i in order:
        probability *= weights[i] / remaining
        remaining -= weights[i]
    return probability


def _chi_square(counts: dict, probabilities: dict, total: int) -> float:
    return sum((counts.get(key, 0) - total * p) ** 2 / (total * p) for key, p in probabilities.items())


def test_exact_k_frequencies_and_log_prob():
    logit_values = [1.5, 0.0, -1.0, 0.5]
    weights = [1 / (1 + math.exp(-z)) for z in logit_values]
    draws = 20000
    logits = torch.tensor(logit_values).view(1, 1, 2, 2).expand(draws, 1, 2, 2)
    index, log_prob = sample_exact_k(logits, 2, generator=12)
    assert index.shape == (draws, 2) and (index[:, 0] != index[:, 1]).all()
    orders = [tuple(row) for row in index.tolist()]
    counts: dict = {}
    for order in orders:
        counts[order] = counts.get(order, 0) + 1
    exact = {order: _plackett_luce_probability(weights, order) for order in itertools.permutations(range(4), 2)}
    assert _chi_square(counts, exact, draws) < 40  # 11 degrees of freedom: p < 1e-4
    # a wrong model (weights exp(z), the softmax of the logits) is rejected by the same test
    wrong = {o: _plackett_luce_probability([math.exp(z) for z in logit_values], o) for o in exact}
    assert _chi_square(counts, wrong, draws) > 200
    expected_log_prob = torch.tensor([math.log(exact[order]) for order in orders])
    torch.testing.assert_close(log_prob, expected_log_prob)


def test_plackett_luce_log_prob_full_permutation_and_gradient():
    logits = torch.randn(2, 1, 2, 3, generator=_generator(13), dtype=torch.float64, requires_grad=True)
    order = torch.stack([torch.randperm(6, generator=_generator(14)) for _ in range(2)])
    log_prob = plackett_luce_log_prob(logits, order)
    for b in range(2):
        weights = torch.sigmoid(logits[b].flatten()).tolist()
        assert math.exp(float(log_prob[b].detach())) == pytest.approx(
            _plackett_luce_probability(weights, tuple(order[b].tolist()))
        )
    assert torch.autograd.gradcheck(lambda z: plackett_luce_log_prob(z, order[:, :4]), (logits,))
    assert torch.autograd.gradcheck(lambda z: plackett_luce_log_prob(z, order), (logits,))
    # stable for extreme logits
    extreme = torch.tensor([[[[60.0, -60.0, 0.0, -200.0]]]], requires_grad=True)
    value = plackett_luce_log_prob(extreme, torch.tensor([[3, 1]]))
    value.backward()
    assert torch.isfinite(value).all() and torch.isfinite(extreme.grad).all()


def test_bernoulli_frequencies_and_log_prob():
    logit_values = [1.0, -0.5, 0.2]
    p = [1 / (1 + math.exp(-z)) for z in logit_values]
    draws = 20000
    logits = torch.tensor(logit_values).view(1, 1, 1, 3).expand(draws, 1, 1, 3)
    selected, log_prob = sample_bernoulli(logits, generator=15)
    assert selected.shape == (draws, 1, 1, 3) and set(selected.unique().tolist()) <= {0.0, 1.0}
    outcomes = [tuple(int(v) for v in row) for row in selected.flatten(1).tolist()]
    counts: dict = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1

    def probability(outcome):
        return math.prod(pi if s else 1 - pi for pi, s in zip(p, outcome))

    exact = {outcome: probability(outcome) for outcome in itertools.product((0, 1), repeat=3)}
    assert _chi_square(counts, exact, draws) < 30  # 7 degrees of freedom: p < 1e-4
    swapped = {outcome: probability(tuple(1 - s for s in outcome)) for outcome in exact}  # P and 1 - P swapped
    assert _chi_square(counts, swapped, draws) > 200
    torch.testing.assert_close(log_prob, torch.tensor([math.log(exact[o]) for o in outcomes]))
    torch.testing.assert_close(
        bernoulli_log_prob(logits[:1], torch.ones(1, 1, 1, 3)), torch.tensor([sum(math.log(pi) for pi in p)])
    )


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_selection(device):
    logits = torch.randn(2, 1, 8, 8, generator=_generator(16)).to(device)
    first, first_log_prob = sample_exact_k(logits, 5, generator=3)
    again, again_log_prob = sample_exact_k(logits, 5, generator=torch.Generator().manual_seed(3))
    other, _ = sample_exact_k(logits, 5, generator=4)
    assert first.device.type == device and torch.equal(first, again) and torch.equal(first_log_prob, again_log_prob)
    assert not torch.equal(first, other)
    selected, _ = sample_bernoulli(logits, generator=3)
    assert torch.equal(selected, sample_bernoulli(logits, generator=3)[0])
    assert not torch.equal(selected, sample_bernoulli(logits, generator=4)[0])


# ------------------------------------------------------------------------------------------------- REINFORCE


def test_sampling_reward():
    generator = _generator(17)
    target = torch.rand(3, 2, 4, 4, generator=generator)
    outputs = [torch.rand(3, 2, 4, 4, generator=generator, requires_grad=True) for _ in range(2)]
    l1 = [(o.detach() - target).abs().flatten(1).mean(1) for o in outputs]
    l2 = [(o.detach() - target).square().flatten(1).mean(1) for o in outputs]
    reward = sampling_reward(outputs, target)
    assert not reward.requires_grad
    torch.testing.assert_close(reward, -(l1[0] + l1[1]) / 2)
    torch.testing.assert_close(
        sampling_reward(outputs, target, stage_weights=[0.2, 1.0], distance="l2"), -0.2 * l2[0] - l2[1]
    )
    penalised = sampling_reward(
        outputs, target, selected_count=torch.tensor([9, 10, 11]), budget=10, overflow_penalty=0.5
    )
    torch.testing.assert_close(penalised, reward - torch.tensor([0.0, 0.0, 0.5]))
    torch.testing.assert_close(sampling_reward(outputs, target, selected_count=10, budget=10), reward)


def test_policy_gradient_loss_gradient():
    logits = torch.randn(3, 1, 2, 2, generator=_generator(18), requires_grad=True)
    selected = torch.tensor([1.0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]).view(3, 1, 2, 2)
    reward, baseline = torch.tensor([0.3, -0.1, 0.5]), torch.tensor([0.1, 0.1, 0.1])
    policy_gradient_loss(bernoulli_log_prob(logits, selected), reward, baseline).backward()
    # d/dz of -(R - b)/B * log p(s): -(R - b)/B * (s - sigmoid(z))
    expected = -((reward - baseline) / 3).view(3, 1, 1, 1) * (selected - logits.detach().sigmoid())
    torch.testing.assert_close(logits.grad, expected)
    torch.testing.assert_close(leave_one_out_baseline(reward), torch.tensor([0.2, 0.4, 0.1]))
    with_float = policy_gradient_loss(torch.tensor([1.0, 2.0, 3.0]), reward, 0.1)
    torch.testing.assert_close(with_float, torch.tensor(-(0.2 * 1 - 0.2 * 2 + 0.4 * 3) / 3))


def _set_reward(chosen: frozenset) -> float:
    """Any function of the chosen set; here with an interaction between pixels 0 and 2."""
    return (
        0.5 * (0 in chosen) - 0.8 * (1 in chosen) + 0.6 * (2 in chosen) - 0.4 * (3 in chosen) + 0.7 * ({0, 2} <= chosen)
    )


def test_reinforce_estimate_is_unbiased_bernoulli():
    """The batch-averaged REINFORCE gradient matches the exact gradient of E[R] (enumeration)."""
    base = torch.tensor([[[[0.4, -0.6, 0.1]]]], dtype=torch.float64, requires_grad=True)
    outcomes = list(itertools.product((0, 1), repeat=3))
    mask = torch.tensor(outcomes, dtype=torch.float64).view(8, 1, 1, 3)
    rewards = torch.tensor(
        [_set_reward(frozenset(i for i, s in enumerate(o) if s)) for o in outcomes], dtype=torch.float64
    )
    expected_reward = (bernoulli_log_prob(base.expand(8, 1, 1, 3), mask).exp() * rewards).sum()
    (exact,) = torch.autograd.grad(expected_reward, base)

    draws = 20000
    selected, log_prob = sample_bernoulli(base.expand(draws, 1, 1, 3), generator=19)
    outcome_index = (selected.flatten(1) * torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).sum(1).long()
    reward = rewards[outcome_index]
    policy_gradient_loss(log_prob, reward, leave_one_out_baseline(reward)).backward()
    assert exact.abs().min() > 0.04
    torch.testing.assert_close(-base.grad, exact, rtol=0, atol=0.01)


def test_reinforce_estimate_is_unbiased_exact_k():
    base = torch.tensor([[[[0.8, -0.4], [0.0, 1.2]]]], dtype=torch.float64, requires_grad=True)
    orders = list(itertools.permutations(range(4), 2))
    order_tensor = torch.tensor(orders)
    rewards = torch.tensor([_set_reward(frozenset(o)) for o in orders], dtype=torch.float64)
    probability = plackett_luce_log_prob(base.expand(len(orders), 1, 2, 2), order_tensor).exp()
    assert float(probability.sum().detach()) == pytest.approx(1.0)
    (exact,) = torch.autograd.grad((probability * rewards).sum(), base)

    draws = 20000
    index, log_prob = sample_exact_k(base.expand(draws, 1, 2, 2), 2, generator=20)
    lookup = {order: i for i, order in enumerate(orders)}
    reward = rewards[torch.tensor([lookup[tuple(row)] for row in index.tolist()])]
    # self-critical baseline: the reward of the top-K selection
    greedy = rewards[lookup[tuple(select_top_k(base.detach(), 2)[0].tolist())]]
    policy_gradient_loss(log_prob, reward, greedy.expand(draws)).backward()
    assert exact.abs().min() > 0.04
    torch.testing.assert_close(-base.grad, exact, rtol=0, atol=0.01)


# ------------------------------------------------------------------------------------------------- errors


def test_input_checks():
    features = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="coords must be"):
        sample_at_coords(features, torch.rand(1, 3))
    with pytest.raises(ValueError, match="batch"):
        sample_at_coords(features, torch.rand(2, 3, 2))
    with pytest.raises(ValueError, match="values must be"):
        scatter_to_grid(torch.rand(2, 3), torch.rand(1, 3, 2), (4, 4))
    with pytest.raises(ValueError, match="size must be"):
        scatter_to_grid(torch.rand(1, 2, 3), torch.rand(1, 3, 2), (4, 0))
    with pytest.raises(ValueError, match="num_pixels"):
        select_top_k(torch.rand(1, 1, 2, 2), 5)
    with pytest.raises(ValueError, match="logits must be"):
        sample_exact_k(torch.rand(1, 2, 2, 2), 1, generator=0)
    with pytest.raises(TypeError, match="generator"):
        sample_bernoulli(torch.rand(1, 1, 2, 2), generator=None)
    with pytest.raises(ValueError, match="coverage"):
        skip_merge(torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3))
    with pytest.raises(ValueError, match="both or neither"):
        sampling_reward([torch.rand(1, 3, 2, 2)], torch.rand(1, 3, 2, 2), budget=3)
    with pytest.raises(ValueError, match="does not match"):
        sampling_reward([torch.rand(1, 3, 2, 2)], torch.rand(1, 3, 2, 3))
    with pytest.raises(ValueError, match="B >= 2"):
        leave_one_out_baseline(torch.rand(1))
