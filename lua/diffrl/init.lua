-- require 'diffrl': the library users and recipes see. Everything from the
-- bindings (tensors, ops, random) under one name, plus the Lua library's
-- modules as they land (samplers, RL algorithms, rewards, configs, ...).
local core = require 'diffrl.core'
local api = require 'diffrl.core.ffi'

-- Errors raised inside this library are reported at the caller's line.
local here = debug.getinfo(1, 'S').source:match('^@(.*)/init%.lua$')
if here then api.add_internal_dir(here) end

local M = {}
for k, v in pairs(core) do M[k] = v end
M.optim = require 'diffrl.optim'
M.sampler = require 'diffrl.sampler'
M.rewards = require 'diffrl.rewards'
M.shapes = require 'diffrl.shapes'
M.prompts = require 'diffrl.prompts'
M.config = require 'diffrl.config'
M.rundir = require 'diffrl.rundir'
M.progress = require 'diffrl.progress'
M.report = require 'diffrl.report'
M.pipeline = require 'diffrl.pipeline'
M.rl = require 'diffrl.rl'
-- ranks (issue 9): the launcher's environment, the communicator, sharding helpers
M.dist = require 'diffrl.dist'
M.comm = require 'diffrl.core.comm'
-- data (issue 11): image-text sources for the pretraining loss
M.data = { shards = require 'diffrl.data.shards', folder = require 'diffrl.data.folder' }

return M
