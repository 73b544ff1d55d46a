-- Settings of recipes/quickstart.lua. Override any of them on the command line:
--   diffrl run recipes/quickstart.lua iterations=100 batch=512
return {
  seed = 1234,        -- Philox seed: same seed, same run
  iterations = 60,    -- policy-gradient steps
  batch = 256,        -- samples per step (the paper's "global batch")
  dim = 64,           -- action dimension
  sigma = 0.5,        -- policy standard deviation
  lr = 0.15,          -- step size on the policy mean
  print_every = 10,
}
