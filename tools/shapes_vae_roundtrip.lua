-- How much shape form a shapes model's VAE keeps: renders N shapes-world scenes
-- (a fixed part of the stream no training run draws), encodes and decodes them, and
-- scores renders and reconstructions with shapes_composition (the detector's mean
-- confidence over the objects each caption names). The reconstruction's score is the
-- ceiling of what the UNet's samples can reach through this VAE.
--
--   diffrl run tools/shapes_vae_roundtrip.lua models/shapes-sharp [N]      # N default 128
--
-- Measured (2 CPU cores, N 128): models/shapes-base  renders 0.999, round trip 0.571;
--                                 models/shapes-sharp renders 0.999, round trip 0.977.
local dr = require 'diffrl'
local pretrain = require 'diffrl.pretrain'
local shapes = require 'diffrl.shapes'

local dir, n = arg and arg[1], tonumber(arg and arg[2] or 128)
if not dir or dir == '--help' or not n then
  io.write('Usage: diffrl run tools/shapes_vae_roundtrip.lua MODEL_DIR [N]\n')
  return
end
local parts = pretrain.load(dir)
local res = parts.configs.vae.sample_size or 32
local images, captions = shapes.sample(n, { seed = 7, offset = 2 ^ 42, resolution = res, max_objects = 3 })
local recon = pretrain.reconstruct(parts, images)
local comp = dr.rewards.get('shapes_composition')
local mean = require('diffrl.stats').mean
local d = recon - images
print(('%s: %d scenes at %dx%d: composition on the renders %.3f, on the VAE round trip %.3f; mse %.5f')
  :format(dir, n, res, res, mean(dr.rewards.call(comp, images, captions, {})),
          mean(dr.rewards.call(comp, recon, captions, {})), (d * d):mean():item()))
