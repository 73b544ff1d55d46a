-- Settings of recipes/compressibility.lua (DDPO's compressibility run, scaled to
-- what a CPU can do; raise sample.batch_size / sample.steps / resolution on a GPU).
return {
  train = { iterations = 100, lr = 3e-4, timestep_count = 5, inner_epochs = 1,
            clip_range = 1e-4, adv_clip_max = 5, max_grad_norm = 1.0 },
  sample = { batch_size = 8, steps = 20, eta = 1.0, guidance = 5.0 },
  lora = { rank = 4 },
  checkpoint = { every = 10, keep = 3 },
}
