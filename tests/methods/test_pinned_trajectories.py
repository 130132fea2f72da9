"""Pinned training trajectories of every registered method, observed from outside.

Each scenario trains one small MLP (256-48-24-10; the first layer's 12,288 weights are enough
for the straight-through methods' fast selection path) on six fixed batches with a plain loop:
``create_method(...)``, ``attach(model, opt)``, then ``loss.backward(); opt.step()``. At the steps
in ``PIN_STEPS`` it records the loss and a checksum of each target's mask read from
``method.state_dict()["masks"]`` after ``method.apply_pending()``, i.e. the masks in force
for the next step (live entries and the sum of their flat indices); over the whole
run, the number of steps after which any mask changed; at the end, the loss of the first batch
under the trained model and ``method.report()``'s global live count. Nothing internal is read, so
the pins survive refactors that keep the behaviour.

The ST-3 family gets an optimizer whose groups already exempt biases from weight decay
(Linear weights: ``weight_decay=wd``; everything else: 0), so no parameter has to move out of
the user's optimizer; every other method gets ``opt(model.parameters(), weight_decay=wd)``.

The first nine scenarios are those of the former side-by-side test of the straight-through
methods (ST-3, ST-3σ, DNW, SCL, STR) against their earlier per-step code: same model, batches,
optimizers, weight decay and options, 240 steps as there. The others give every other registered
method one short configuration that makes it act within the run (``covers`` says what each
exercises). The pins were generated on the torch version in ``PINNED_TORCH`` (CPU, one thread):
there losses must match to rtol 1e-6 and mask checksums, mask-change counts and live counts
exactly. Under another torch version float reductions may differ in the last bits, so a looser
check runs: losses to rtol 1e-4 and per-target live counts within 1% (index sums and change
counts are not compared). A single flipped mask entry changes everything after it, so a failure
there after a torch upgrade means: check the trajectory still makes sense, then regenerate the pins
with ``PYTHONPATH=src python tests/methods/test_pinned_trajectories.py`` (it prints ``PINS``) and
update ``PINNED_TORCH``; do the same, saying why in the commit, when a change moves them on purpose.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

from sparsetrain.methods import create_method, list_methods

PINNED_TORCH = "2.13.0"
PIN_STEPS = (1, 2, 5, 10, 20, 40, 60, 80, 100, 120, 150, 200, 240)
ST3_FAMILY = ("st3", "st3_sigma")
Checksum = tuple[tuple[int, int], ...]  # per target: (live entries, sum of their flat indices)


@dataclass(frozen=True)
class Scenario:
    """One run: the method and its options, the optimizer, and the steps trained."""

    method: str
    options: dict[str, Any]
    opt: str  # "sgd" (momentum 0.9) or "adamw"
    lr: float
    wd: float
    steps: int
    covers: str = field(default="", compare=False)


def _s(method: str, opt: str, lr: float, wd: float, steps: int, covers: str, **options: Any):
    return Scenario(method, {"total_steps": steps, **options}, opt, lr, wd, steps, covers)


SCENARIOS: dict[str, Scenario] = {
    # --- the former side-by-side test's scenarios, 240 steps each ---
    "st3": _s("st3", "sgd", 0.05, 5e-4, 240, "dense to 10, cubic ramp 10-150, hold, exact "
              "top-k fix at 200, masked fine-tune", sparsity=0.9, begin_step=10, end_step=150,
              freeze_step=200),
    "st3_sigma": _s("st3_sigma", "sgd", 0.05, 5e-4, 240, "σ-scaled thresholds, ramp 0-120, "
                    "fix at 200", sparsity=0.8, begin_step=0, end_step=120, freeze_step=200),
    "st3_hard_interval": _s("st3", "adamw", 1e-3, 1e-2, 240, "hard threshold, no rescale, "
                            "thresholds every 3 steps, ramp to 60, AdamW", sparsity=0.95,
                            soft=False, rescale=False, update_interval=3, end_step=60),
    "dnw_layer": _s("dnw", "sgd", 0.05, 5e-4, 240, "per-layer top-k every step",
                    sparsity=0.9),
    "dnw_global_ramp": _s("dnw", "sgd", 0.1, 0.0, 240, "global top-k, ramp to step 100, "
                          "no weight decay", sparsity=0.95, scope="global", end_step=100),
    "dnw_interval": _s("dnw", "adamw", 1e-3, 1e-2, 240, "top-k every 4 steps, AdamW",
                       sparsity=0.8, update_interval=4),
    "scl_adaptive": _s("scl", "sgd", 0.05, 5e-4, 240, "adaptive λ towards 0.8",
                       lambda_mode="adaptive", sparsity=0.8, lam=0.5, mask_lr=0.5),
    "scl_leaky_adamw": _s("scl", "adamw", 1e-3, 1e-2, 240, "fixed λ, leaky-ReLU STE, "
                          "mean-|w| normalisation, masks frozen at 200, AdamW", lam=0.3,
                          ste="leaky_relu", normalization="mean_abs", mask_lr=0.2,
                          freeze_step=200),
    "str": _s("str", "sgd", 0.05, 5e-4, 240, "learned thresholds with their own decay",
              s_init=-5.0, threshold_weight_decay=0.05),
    # --- one short configuration per other registered method ---
    "dense": _s("dense", "sgd", 0.05, 5e-4, 20, "no masking: the plain optimizer's losses"),
    "static": _s("static", "sgd", 0.05, 5e-4, 40, "random ERK mask fixed at attach",
                 sparsity=0.9),
    "static_snip": _s("static", "sgd", 0.05, 5e-4, 40, "SNIP mask from the first batch",
                      sparsity=0.9, init="snip"),
    "set": _s("set", "sgd", 0.05, 5e-4, 100, "ER, magnitude-sign drop, random regrowth "
              "every 10 steps", sparsity=0.9, update_interval=10),
    "rigl": _s("rigl", "sgd", 0.05, 5e-4, 100, "ERK, gradient regrowth every 10 steps, "
               "stops at 75%", sparsity=0.9, update_interval=10),
    "rigl_adamw_global": _s("rigl", "adamw", 1e-3, 1e-2, 100, "global scope, AdamW",
                            sparsity=0.9, update_interval=10, scope="global"),
    "mest": _s("mest", "sgd", 0.05, 5e-4, 100, "|w| + γ|g| drop, random regrowth",
               sparsity=0.9, update_interval=10),
    "dst_rsens_kept": _s("dst", "sgd", 0.05, 5e-4, 100, "RSensitivity × gradient, regrown "
                         "weights keep their value", sparsity=0.9, update_interval=10,
                         prune="reciprocal_sensitivity", grow="gradient", regrown_value="kept"),
    "gmp": _s("gmp", "sgd", 0.05, 5e-4, 100, "cubic ramp 10-60 every 5 steps", sparsity=0.9,
              begin_step=10, end_step=60, update_interval=5),
    "granet": _s("granet", "sgd", 0.05, 5e-4, 100, "prune-and-regrow ramp to 60 every 10 "
                 "steps", sparsity=0.9, update_interval=10, end_step=60),
    "optg": _s("optg", "sgd", 0.05, 5e-4, 100, "score-learned masks, sigmoid ramp over "
               "epochs of 10 steps", sparsity=0.9, steps_per_epoch=10),
    "srste": _s("srste", "sgd", 0.05, 5e-4, 100, "2:4 groups of the current |w| every step, "
                "sparse-refined decay, last layer dense"),
}  # fmt: skip


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(256, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10)
    )


def _batches(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(256, 10, generator=g)
    out = []
    for _ in range(n):
        x = torch.randn(32, 256, generator=g)
        out.append((x, (x @ teacher).argmax(1)))
    return out


def _optimizer(sc: Scenario, model: nn.Module) -> torch.optim.Optimizer:
    if sc.method in ST3_FAMILY:  # groups built by the user: decay on Linear weights only
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
        ids = {id(w) for w in weights}
        rest = [p for p in model.parameters() if id(p) not in ids]
        params: Any = [{"params": weights, "weight_decay": sc.wd},
                       {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    else:
        params = model.parameters()
    if sc.opt == "sgd":
        return torch.optim.SGD(params, lr=sc.lr, momentum=0.9, weight_decay=sc.wd)
    return torch.optim.AdamW(params, lr=sc.lr, weight_decay=sc.wd)


def _checksum(masks: dict[str, torch.Tensor]) -> Checksum:
    """Per target, in name order: (live entries, sum of their flat indices)."""
    out = []
    for name in sorted(masks):
        live = masks[name].reshape(-1).nonzero().reshape(-1)
        out.append((int(live.numel()), int(live.sum())))
    return tuple(out)


class Pin(NamedTuple):
    """What a scenario pins (see the module docstring)."""

    rows: list[tuple[int, float, Checksum]]  # (step, loss of that step, masks after it)
    mask_changes: int  # steps after which some mask differed from before the step
    final_loss: float  # first batch's loss under the trained model
    live: int  # ``method.report().nnz`` at the end


def trajectory(key: str) -> Pin:
    """Train scenario ``key`` and record its pins."""
    sc = SCENARIOS[key]
    model = _model()
    opt = _optimizer(sc, model)
    method = create_method(sc.method, **sc.options)
    method.attach(model, opt)
    batches = _batches()
    rows: list[tuple[int, float, Checksum]] = []
    prev, changes = _checksum(method.state_dict()["masks"]), 0
    for step in range(1, sc.steps + 1):
        x, y = batches[(step - 1) % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.apply_pending()  # the masks in force for the next step (see apply_pending)
        now = _checksum(method.state_dict()["masks"])
        changes += now != prev
        prev = now
        if step in PIN_STEPS or step == sc.steps:
            rows.append((step, loss.item(), now))
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).item()
    return Pin(rows, changes, final, method.report().nnz)


# Generated on torch 2.13.0+cpu, one thread, at commit baa086f (see the module docstring).
# fmt: off
PINS: dict[str, Pin] = {
    # dense to 10, cubic ramp 10-150, hold, exact top-k fix at 200, masked fine-tune
    "st3": Pin(mask_changes=184, live=1368, final_loss=0.005264515522867441, rows=[
        (1, 2.346653461456299, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (2, 2.274113416671753, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (5, 2.3000056743621826, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (10, 2.2232346534729004, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (20, 1.9924402236938477, ((9925, 60899624), (1077, 621566), (223, 27027))),
        (40, 1.3344557285308838, ((6202, 38340333), (927, 532111), (211, 25802))),
        (60, 0.39756593108177185, ((3657, 23071812), (786, 446982), (196, 24862))),
        (80, 0.06983717530965805, ((2102, 13272235), (621, 357810), (184, 23053))),
        (100, 0.05585450679063797, ((1266, 8174943), (496, 288325), (167, 21275))),
        (120, 0.059461358934640884, ((916, 5955652), (420, 245464), (154, 20081))),
        (150, 0.028495367616415024, ((860, 5521048), (362, 212389), (146, 18764))),
        (200, 0.007947966456413269, ((890, 5721410), (338, 198912), (140, 17822))),
        (240, 0.005965211428701878, ((890, 5721410), (338, 198912), (140, 17822))),
    ]),
    # σ-scaled thresholds, ramp 0-120, fix at 200
    "st3_sigma": Pin(mask_changes=188, live=2736, final_loss=0.0054167029447853565, rows=[
        (1, 2.346653461456299, ((12035, 73954726), (1137, 655529), (236, 28365))),
        (2, 2.275102376937866, ((11790, 72502093), (1118, 646417), (233, 28076))),
        (5, 2.308022975921631, ((11084, 68112337), (1070, 615489), (214, 25870))),
        (10, 2.2646422386169434, ((10001, 61447132), (968, 556682), (196, 23917))),
        (20, 2.167954444885254, ((8089, 49588854), (814, 470352), (166, 20489))),
        (40, 1.9749677181243896, ((5241, 32570351), (611, 351461), (127, 16609))),
        (60, 1.1613574028015137, ((3560, 23003958), (440, 257891), (104, 13197))),
        (80, 0.6136928796768188, ((2738, 17948222), (312, 189779), (92, 11908))),
        (100, 0.22039273381233215, ((2442, 15963299), (259, 157551), (86, 11049))),
        (120, 0.04803714156150818, ((2421, 15850044), (230, 137579), (85, 11059))),
        (150, 0.010289340279996395, ((2428, 15974091), (226, 134815), (82, 10972))),
        (200, 0.0050987740978598595, ((2428, 15988902), (226, 135064), (82, 10939))),
        (240, 0.003969770390540361, ((2428, 15988902), (226, 135064), (82, 10939))),
    ]),
    # hard threshold, no rescale, thresholds every 3 steps, ramp to 60, AdamW
    "st3_hard_interval": Pin(mask_changes=219, live=684, final_loss=1.0663336515426636, rows=[
        (1, 2.346653461456299, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (2, 2.274033784866333, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (5, 2.297259569168091, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (10, 2.2350964546203613, ((10921, 67182255), (1116, 643374), (230, 27773))),
        (20, 2.0956685543060303, ((6065, 37497529), (903, 520269), (197, 23955))),
        (40, 2.167282819747925, ((710, 4485370), (648, 370405), (162, 20300))),
        (60, 2.2337512969970703, ((92, 652926), (451, 258146), (141, 17923))),
        (80, 2.1101536750793457, ((190, 1294223), (393, 232476), (135, 17058))),
        (100, 2.083057165145874, ((228, 1505005), (338, 200275), (134, 17102))),
        (120, 1.9031649827957153, ((261, 1732223), (296, 172357), (127, 16203))),
        (150, 1.6736979484558105, ((290, 1930375), (269, 154137), (125, 15843))),
        (200, 1.2626919746398926, ((408, 2561740), (265, 153504), (113, 14235))),
        (240, 1.035895586013794, ((322, 1982178), (252, 147045), (110, 14148))),
    ]),
    # per-layer top-k every step
    "dnw_layer": Pin(mask_changes=240, live=1368, final_loss=0.007634398993104696, rows=[
        (1, 2.3493430614471436, ((1229, 7497893), (115, 61693), (24, 2784))),
        (2, 2.2938177585601807, ((1229, 7509205), (115, 61954), (24, 2762))),
        (5, 2.3233048915863037, ((1229, 7486350), (115, 61646), (24, 2867))),
        (10, 2.305205821990967, ((1229, 7527309), (115, 60678), (24, 2758))),
        (20, 2.261610984802246, ((1229, 7457108), (115, 61025), (24, 2471))),
        (40, 2.247905731201172, ((1229, 7421685), (115, 59343), (24, 2522))),
        (60, 1.8767613172531128, ((1229, 7105774), (115, 65594), (24, 2378))),
        (80, 1.4798909425735474, ((1229, 6658406), (115, 66075), (24, 2256))),
        (100, 0.9043288826942444, ((1229, 6644381), (115, 66293), (24, 2485))),
        (120, 0.5412160754203796, ((1229, 6809210), (115, 68635), (24, 2468))),
        (150, 0.19320036470890045, ((1229, 6830069), (115, 68602), (24, 2611))),
        (200, 0.03415150195360184, ((1229, 6781209), (115, 69295), (24, 2535))),
        (240, 0.006156235467642546, ((1229, 6725949), (115, 68551), (24, 2535))),
    ]),
    # global top-k, ramp to step 100, no weight decay
    "dnw_global_ramp": Pin(mask_changes=240, live=684, final_loss=1.711945652961731, rows=[
        (1, 2.346653461456299, ((11914, 73252341), (1142, 658519), (238, 28542))),
        (2, 2.2741036415100098, ((11553, 70973518), (1127, 651834), (236, 28407))),
        (5, 2.297924280166626, ((10504, 64585442), (1098, 631407), (224, 26967))),
        (10, 2.152716875076294, ((8914, 54703693), (1032, 591821), (212, 25741))),
        (20, 1.4313725233078003, ((6196, 38134192), (933, 540843), (209, 25255))),
        (40, 0.033415891230106354, ((2576, 16280238), (722, 414834), (193, 24242))),
        (60, 0.09853865206241608, ((872, 5484339), (479, 277334), (165, 20645))),
        (80, 1.1308925151824951, ((535, 3675107), (146, 87165), (107, 13464))),
        (100, 1.176560878753662, ((529, 3540982), (103, 57418), (52, 5980))),
        (120, 1.2655740976333618, ((501, 3402538), (136, 72567), (47, 5345))),
        (150, 2.053330183029175, ((502, 3173014), (145, 85984), (37, 4505))),
        (200, 1.7189377546310425, ((514, 3408252), (148, 86964), (22, 2875))),
        (240, 1.5917540788650513, ((525, 3473649), (139, 82152), (20, 2661))),
    ]),
    # top-k every 4 steps, AdamW
    "dnw_interval": Pin(mask_changes=60, live=2736, final_loss=0.5608891248703003, rows=[
        (1, 2.355926752090454, ((2458, 15162555), (230, 126624), (48, 5818))),
        (2, 2.2835588455200195, ((2458, 15162555), (230, 126624), (48, 5818))),
        (5, 2.3225150108337402, ((2458, 15216138), (230, 127348), (48, 5774))),
        (10, 2.2832515239715576, ((2458, 15144340), (230, 128378), (48, 5758))),
        (20, 2.2123851776123047, ((2458, 15281540), (230, 127439), (48, 5463))),
        (40, 2.140218734741211, ((2458, 15482596), (230, 132953), (48, 5366))),
        (60, 1.896006464958191, ((2458, 15357958), (230, 131434), (48, 5315))),
        (80, 1.745041847229004, ((2458, 15197363), (230, 132026), (48, 5359))),
        (100, 1.565550684928894, ((2458, 15195355), (230, 129855), (48, 5359))),
        (120, 1.1798913478851318, ((2458, 15253845), (230, 127055), (48, 5359))),
        (150, 0.9451091885566711, ((2458, 15244586), (230, 127196), (48, 5428))),
        (200, 0.7107731103897095, ((2458, 15290704), (230, 127323), (48, 5540))),
        (240, 0.32100149989128113, ((2458, 15208361), (230, 127274), (48, 5617))),
    ]),
    # adaptive λ towards 0.8
    "scl_adaptive": Pin(mask_changes=240, live=2671, final_loss=0.007162666879594326, rows=[
        (1, 2.346653461456299, ((11483, 70661490), (1085, 619554), (226, 26830))),
        (2, 2.2951972484588623, ((8344, 51365378), (826, 466723), (165, 20014))),
        (5, 2.3153648376464844, ((2343, 14633358), (199, 112449), (40, 5305))),
        (10, 2.259932041168213, ((1598, 10119008), (154, 86319), (33, 3955))),
        (20, 2.068448305130005, ((1599, 10194891), (167, 92668), (42, 5407))),
        (40, 1.774888038635254, ((2130, 13308982), (220, 131577), (54, 6690))),
        (60, 0.8221164345741272, ((2607, 16137545), (253, 150574), (60, 7695))),
        (80, 0.3383254110813141, ((2850, 17510537), (262, 155028), (65, 8025))),
        (100, 0.06558050215244293, ((2991, 18371448), (269, 162380), (64, 8020))),
        (120, 0.025546468794345856, ((2984, 18322112), (265, 160627), (62, 7783))),
        (150, 0.010665549896657467, ((2725, 16708745), (256, 154805), (61, 7483))),
        (200, 0.009341301396489143, ((2456, 15105023), (237, 144109), (59, 7415))),
        (240, 0.005151956342160702, ((2371, 14645661), (243, 147333), (57, 7133))),
    ]),
    # fixed λ, leaky-ReLU STE, mean-|w| normalisation, masks frozen at 200, AdamW
    "scl_leaky_adamw": Pin(mask_changes=200, live=2291, final_loss=0.5075123906135559, rows=[
        (1, 2.346653461456299, ((12230, 75122150), (1143, 657005), (236, 28221))),
        (2, 2.2800610065460205, ((11312, 69537423), (1065, 605731), (219, 26458))),
        (5, 2.291552782058716, ((7164, 44141745), (691, 396443), (135, 16175))),
        (10, 2.2157492637634277, ((3384, 21025190), (335, 192909), (69, 8920))),
        (20, 2.105882167816162, ((2374, 14856159), (231, 128455), (65, 8278))),
        (40, 2.041092872619629, ((2082, 13136112), (224, 125364), (67, 8721))),
        (60, 1.8486229181289673, ((2035, 12756780), (248, 139342), (69, 9013))),
        (80, 1.6739494800567627, ((2012, 12577474), (264, 149830), (72, 9445))),
        (100, 1.5846149921417236, ((1988, 12404158), (266, 151828), (73, 9507))),
        (120, 1.350024938583374, ((1982, 12378785), (272, 153439), (72, 9402))),
        (150, 1.100969910621643, ((1967, 12270810), (271, 153479), (72, 9417))),
        (200, 0.7052372097969055, ((1953, 12181494), (264, 149980), (74, 9640))),
        (240, 0.49094679951667786, ((1953, 12181494), (264, 149980), (74, 9640))),
    ]),
    # learned thresholds with their own decay
    "str": Pin(mask_changes=240, live=1986, final_loss=0.034743230789899826, rows=[
        (1, 2.3471791744232178, ((10925, 67142037), (1102, 634292), (233, 28076))),
        (2, 2.277132987976074, ((10891, 66912191), (1100, 633425), (233, 28076))),
        (5, 2.3080406188964844, ((10691, 65722502), (1096, 631523), (231, 27834))),
        (10, 2.256185293197632, ((10019, 61525549), (1081, 621884), (222, 26826))),
        (20, 2.138608455657959, ((7415, 45548865), (942, 541963), (202, 24731))),
        (40, 2.1572067737579346, ((3199, 20142480), (550, 316738), (135, 17359))),
        (60, 1.756213665008545, ((3235, 20207518), (449, 259673), (117, 15392))),
        (80, 1.135751724243164, ((3055, 18979846), (487, 281330), (118, 15626))),
        (100, 0.710092306137085, ((2825, 17579050), (443, 255400), (113, 14631))),
        (120, 0.2752305269241333, ((2651, 16526206), (417, 244880), (112, 14597))),
        (150, 0.07558100670576096, ((2194, 13866496), (342, 202695), (98, 12303))),
        (200, 0.031285617500543594, ((1832, 11714061), (254, 149744), (86, 11152))),
        (240, 0.03319687023758888, ((1677, 10798179), (228, 135108), (81, 10416))),
    ]),
    # no masking: the plain optimizer's losses
    "dense": Pin(mask_changes=0, live=13680, final_loss=1.906170129776001, rows=[
        (1, 2.346653461456299, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (2, 2.274113655090332, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (5, 2.3000001907348633, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (10, 2.223233222961426, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (20, 1.8949414491653442, ((12288, 75491328), (1152, 662976), (240, 28680))),
    ]),
    # random ERK mask fixed at attach
    "static": Pin(mask_changes=0, live=1368, final_loss=2.250708818435669, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.289445638656616, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.327909231185913, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.3060998916625977, ((1014, 6364061), (240, 130972), (114, 13820))),
        (20, 2.2671456336975098, ((1014, 6364061), (240, 130972), (114, 13820))),
        (40, 2.304117441177368, ((1014, 6364061), (240, 130972), (114, 13820))),
    ]),
    # SNIP mask from the first batch
    "static_snip": Pin(mask_changes=1, live=1368, final_loss=2.1612753868103027, rows=[
        (1, 2.346653461456299, ((810, 5174887), (428, 270439), (130, 16708))),
        (2, 2.2840375900268555, ((810, 5174887), (428, 270439), (130, 16708))),
        (5, 2.3232576847076416, ((810, 5174887), (428, 270439), (130, 16708))),
        (10, 2.2971038818359375, ((810, 5174887), (428, 270439), (130, 16708))),
        (20, 2.2500956058502197, ((810, 5174887), (428, 270439), (130, 16708))),
        (40, 2.2651095390319824, ((810, 5174887), (428, 270439), (130, 16708))),
    ]),
    # ER, magnitude-sign drop, random regrowth every 10 steps
    "set": Pin(mask_changes=9, live=1368, final_loss=2.234017848968506, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.289445638656616, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.327909231185913, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.3060998916625977, ((1014, 6266837), (240, 133217), (114, 14275))),
        (20, 2.266653537750244, ((1014, 6344763), (240, 132026), (114, 14626))),
        (40, 2.3042149543762207, ((1014, 6323708), (240, 137712), (114, 14657))),
        (60, 2.231428384780884, ((1014, 6359658), (240, 137839), (114, 14792))),
        (80, 2.2618982791900635, ((1014, 6400175), (240, 140117), (114, 13293))),
        (100, 2.2843542098999023, ((1014, 6346379), (240, 139815), (114, 14023))),
    ]),
    # ERK, gradient regrowth every 10 steps, stops at 75%
    "rigl": Pin(mask_changes=7, live=1368, final_loss=1.913769245147705, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.289445638656616, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.327909231185913, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.3060998916625977, ((1014, 6816477), (240, 133379), (114, 13393))),
        (20, 2.266611099243164, ((1014, 6815362), (240, 142175), (114, 14281))),
        (40, 2.299760341644287, ((1014, 6590246), (240, 133011), (114, 13767))),
        (60, 2.2168617248535156, ((1014, 6747325), (240, 134804), (114, 14295))),
        (80, 2.1833276748657227, ((1014, 6740804), (240, 134319), (114, 14332))),
        (100, 1.944759488105774, ((1014, 6740804), (240, 134319), (114, 14332))),
    ]),
    # global scope, AdamW
    "rigl_adamw_global": Pin(mask_changes=7, live=1368, final_loss=2.2233998775482178, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.2898244857788086, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.3282086849212646, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.310739040374756, ((1004, 6940344), (233, 123586), (131, 15261))),
        (20, 2.2826263904571533, ((1003, 6435121), (235, 131386), (130, 15734))),
        (40, 2.2952723503112793, ((989, 6404684), (244, 129524), (135, 15485))),
        (60, 2.285249710083008, ((976, 6108949), (257, 136398), (135, 16068))),
        (80, 2.2115478515625, ((974, 6096084), (257, 136367), (137, 16209))),
        (100, 2.182300567626953, ((974, 6096084), (257, 136367), (137, 16209))),
    ]),
    # |w| + γ|g| drop, random regrowth
    "mest": Pin(mask_changes=8, live=1368, final_loss=2.2012383937835693, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.289445638656616, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.327909231185913, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.3060998916625977, ((1014, 6297932), (240, 133315), (114, 14146))),
        (20, 2.2669730186462402, ((1014, 6406583), (240, 132058), (114, 14566))),
        (40, 2.3032546043395996, ((1014, 6502133), (240, 138188), (114, 14685))),
        (60, 2.227403163909912, ((1014, 6479579), (240, 139849), (114, 14534))),
        (80, 2.2548954486846924, ((1014, 6508554), (240, 138116), (114, 14414))),
        (100, 2.246614456176758, ((1014, 6508554), (240, 138116), (114, 14414))),
    ]),
    # RSensitivity × gradient, regrown weights keep their value
    "dst_rsens_kept": Pin(mask_changes=9, live=1368, final_loss=2.198070526123047, rows=[
        (1, 2.3501174449920654, ((1014, 6364061), (240, 130972), (114, 13820))),
        (2, 2.289445638656616, ((1014, 6364061), (240, 130972), (114, 13820))),
        (5, 2.327909231185913, ((1014, 6364061), (240, 130972), (114, 13820))),
        (10, 2.3060998916625977, ((1014, 7011265), (240, 129205), (114, 12781))),
        (20, 2.2690813541412354, ((1014, 7205919), (240, 130666), (114, 14002))),
        (40, 2.3086097240448, ((1014, 6379845), (240, 127820), (114, 12759))),
        (60, 2.23095703125, ((1014, 6460461), (240, 125259), (114, 13654))),
        (80, 2.2633070945739746, ((1014, 6494221), (240, 128041), (114, 13838))),
        (100, 2.2518413066864014, ((1014, 6508922), (240, 127791), (114, 13960))),
    ]),
    # cubic ramp 10-60 every 5 steps
    "gmp": Pin(mask_changes=10, live=1368, final_loss=0.7288677096366882, rows=[
        (1, 2.346653461456299, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (2, 2.274113655090332, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (5, 2.3000001907348633, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (10, 2.223233222961426, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (20, 1.9268712997436523, ((6891, 42345220), (646, 370949), (135, 17056))),
        (40, 1.4117927551269531, ((1937, 12312574), (181, 106331), (38, 4891))),
        (60, 0.93089759349823, ((1229, 7942653), (115, 69382), (24, 3315))),
        (80, 0.502182126045227, ((1229, 7942653), (115, 69382), (24, 3315))),
        (100, 0.393246591091156, ((1229, 7942653), (115, 69382), (24, 3315))),
    ]),
    # prune-and-regrow ramp to 60 every 10 steps
    "granet": Pin(mask_changes=9, live=1368, final_loss=0.19498683512210846, rows=[
        (1, 2.346653461456299, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (2, 2.274113655090332, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (5, 2.3000001907348633, ((12288, 75491328), (1152, 662976), (240, 28680))),
        (10, 2.223233222961426, ((7336, 46135437), (954, 552955), (203, 23950))),
        (20, 2.0283849239349365, ((4092, 26261310), (758, 449870), (166, 20344))),
        (40, 1.5958609580993652, ((1330, 8784877), (396, 241429), (98, 11589))),
        (60, 1.0151256322860718, ((982, 6784568), (301, 181875), (85, 10258))),
        (80, 0.37953171133995056, ((982, 6567937), (301, 181597), (85, 10682))),
        (100, 0.11337654292583466, ((982, 6507824), (301, 181150), (85, 10738))),
    ]),
    # score-learned masks, sigmoid ramp over epochs of 10 steps
    "optg": Pin(mask_changes=9, live=1368, final_loss=0.5791864395141602, rows=[
        (1, 2.3466479778289795, ((12208, 75038010), (1151, 662428), (239, 28577))),
        (2, 2.2741096019744873, ((12208, 75038010), (1151, 662428), (239, 28577))),
        (5, 2.299973726272583, ((12208, 75038010), (1151, 662428), (239, 28577))),
        (10, 2.2236669063568115, ((12223, 75083816), (1039, 587686), (197, 22992))),
        (20, 1.9614168405532837, ((11892, 72917426), (996, 569818), (208, 25022))),
        (40, 0.8182539343833923, ((9339, 57138372), (832, 469965), (198, 24700))),
        (60, 0.08714740723371506, ((3901, 24128658), (613, 345384), (165, 20636))),
        (80, 0.8056199550628662, ((1438, 9434348), (384, 216235), (130, 16237))),
        (100, 0.7149182558059692, ((930, 5825406), (323, 179540), (115, 14157))),
    ]),
    # 2:4 groups of the current |w| every step, sparse-refined decay, last layer dense
    "srste": Pin(mask_changes=95, live=6720, final_loss=0.0023620605934411287, rows=[
        (1, 2.3471522331237793, ((6144, 37745706), (576, 331486))),
        (2, 2.2802014350891113, ((6144, 37745701), (576, 331483))),
        (5, 2.3192856311798096, ((6144, 37745687), (576, 331483))),
        (10, 2.2557692527770996, ((6144, 37745625), (576, 331485))),
        (20, 2.02886962890625, ((6144, 37745645), (576, 331464))),
        (40, 1.0400677919387817, ((6144, 37745728), (576, 331493))),
        (60, 0.08568694442510605, ((6144, 37745772), (576, 331484))),
        (80, 0.002461781958118081, ((6144, 37745813), (576, 331488))),
        (100, 0.0019850158132612705, ((6144, 37745813), (576, 331492))),
    ]),
}
# fmt: on


def test_every_registered_method_is_pinned() -> None:
    assert {sc.method for sc in SCENARIOS.values()} == set(list_methods())
    assert set(PINS) == set(SCENARIOS)


@pytest.mark.parametrize("key", sorted(SCENARIOS))
def test_pinned_trajectory(key: str) -> None:
    got, pin = trajectory(key), PINS[key]
    where = f"{key}: pinned on torch {PINNED_TORCH}, running {torch.__version__}"
    assert [r[0] for r in got.rows] == [r[0] for r in pin.rows], where
    losses, pinned_losses = [r[1] for r in got.rows], [r[1] for r in pin.rows]
    if torch.__version__.split("+")[0] == PINNED_TORCH:
        assert losses == pytest.approx(pinned_losses, rel=1e-6, abs=0), where
        assert got.final_loss == pytest.approx(pin.final_loss, rel=1e-6, abs=0), where
        assert [r[2] for r in got.rows] == [r[2] for r in pin.rows], where
        assert (got.mask_changes, got.live) == (pin.mask_changes, pin.live), where
    else:
        assert losses == pytest.approx(pinned_losses, rel=1e-4), where
        for (step, _, masks), (_, _, pinned) in zip(got.rows, pin.rows, strict=True):
            counts, pinned_counts = [n for n, _ in masks], [n for n, _ in pinned]
            assert counts == pytest.approx(pinned_counts, rel=0.01), f"{where}, step {step}"


def _generate() -> None:
    """Print the PINS literal for the current code (one thread, as the test suite runs)."""
    torch.set_num_threads(1)
    print("# fmt: off")
    print("PINS: dict[str, Pin] = {")
    for key, sc in SCENARIOS.items():
        pin = trajectory(key)
        for line in textwrap.wrap(sc.covers, 92):
            print(f"    # {line}")
        head = f"mask_changes={pin.mask_changes}, live={pin.live}, final_loss={pin.final_loss!r}"
        print(f'    "{key}": Pin({head}, rows=[')
        for row in pin.rows:
            print(f"        {row!r},")
        print("    ]),")
    print("}")
    print("# fmt: on")


if __name__ == "__main__":
    _generate()
