"""Does a bouncing-shapes model pool colour evidence over frames?  python benchmarks/colour_pooling.py CKPT

Issue 15's probe of the demo's flicker (numbers in benchmarks/README.md and the issue's note).
For real clips x, z_t = alpha x + sigma eps (independent per frame); x_hat = model.  Inside the object's
mask, the mean colour of x_hat per frame; report the cross-frame std of that colour (normalized by the
spread of colours over the batch), and the share of clips whose x_hat colour class is the same in all
frames, at several t."""
import json
import sys

import torch
from kinema.system import load_system
from kinema.metrics.consistency import reference_clips
from kinema.metrics.prompt_following import dominant_color
from kinema.diffusion.objective import prediction_from_output, coefficients

system, _ = load_system(sys.argv[1], device="cpu")
net = system.model.eval()
cfg = system.cfg
from kinema.system import build_schedule
sched = build_schedule(cfg)
x = reference_clips(64, 8, 32, seed=7)
mask = (x.amax(1, keepdim=True) > 0).float()  # [N,1,F,H,W]
g = torch.Generator().manual_seed(0)
rows = []
for t in [0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]:
    logsnr = sched.logsnr(torch.full((len(x),), t, dtype=torch.float64))
    alpha, sigma = coefficients(logsnr, x)
    eps = torch.randn(x.shape, generator=g)
    z = alpha * x + sigma * eps
    with torch.no_grad():
        out = net(z, logsnr.float(), None)
    pred = prediction_from_output(out, z, alpha, sigma, cfg.diffusion.parameterization)
    xh = pred.x
    col = (xh * mask).sum((3, 4)) / mask.sum((3, 4)).clamp(min=1)  # [N,3,F]
    within = col.std(2).mean().item()
    between = col.mean(2).std(0).mean().item()
    agree = 0
    for i in range(len(x)):
        cls = set()
        for fr in range(8):
            frame = xh[i, :, fr] * mask[i, :, fr] - (1 - mask[i, :, fr])
            cls.add(dominant_color(frame[:, None]))
        agree += len(cls) == 1
    rows.append(dict(t=t, logsnr=round(float(logsnr[0]), 2), frame_std=round(within, 4), clip_std=round(between, 4),
                     ratio=round(within / max(between, 1e-8), 3), colour_agree=agree / len(x)))
    print(json.dumps(rows[-1]), flush=True)
