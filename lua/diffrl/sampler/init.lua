-- diffrl.sampler: schedules and samplers as pure functions over tensors.
-- See README.md beside this file.
return {
  schedule = require 'diffrl.sampler.schedule',
  ddim = require 'diffrl.sampler.ddim',
  ddpm = require 'diffrl.sampler.ddpm',
  cfg = require 'diffrl.sampler.cfg',
  sample = require('diffrl.sampler.sample').sample,
  from_config = require('diffrl.sampler.schedule').from_config,
}
