"""diffusion_curriculum: timestep curricula, samplers, loss weightings and momentum schedules that make diffusion
models train faster, with the tools that measure whether they do.

Use it in your own loop::

    from diffusion_curriculum import timesteps
    from diffusion_curriculum.process import DiscreteProcess
    sampler = timesteps.build("uniform", DiscreteProcess.cosine(1000), total_steps=100_000)
    draw = sampler.sample(batch_size, device=device)            # draw.t, draw.weight
    loss = (draw.weight * per_sample_loss).mean(); sampler.observe(draw.t, per_sample_loss.detach())
"""

__version__ = "0.1.0"
