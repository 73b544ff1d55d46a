-- The REPL under a real terminal (tmux): line editing, multi-line input,
-- printing, Tab completion, errors that do not end the session, Ctrl-C.
local bin = os.getenv('DIFFRL_BIN') or 'build/diffrl'

local function sh(cmd)
  local p = io.popen(cmd .. ' 2>/dev/null')
  local out = p:read('*a')
  p:close()
  return out
end

local has_tmux = os.execute('command -v tmux >/dev/null 2>&1') == 0

describe('the REPL on a terminal #cli #tty', function()
  if not has_tmux then
    pending('needs tmux (tools/install-deps --ci installs it)')
    return
  end

  local session = 'diffrl_spec_' .. tostring(os.time()) .. '_' .. math.random(1e6)
  local history = os.tmpname()

  local function keys(...)
    for _, k in ipairs({ ... }) do
      if k.literal then
        sh(("tmux send-keys -t %s -l %q"):format(session, k.literal))
      else
        sh(("tmux send-keys -t %s %s"):format(session, k))
      end
    end
  end
  local function line(text) keys({ literal = text }, 'Enter') end
  local function screen() return sh(('tmux capture-pane -p -J -S -200 -t %s'):format(session)) end
  -- Waits until the screen contains `needle` (plain text), up to ~20 s (CI
  -- machines can be loaded).
  local function wait_for(needle)
    for _ = 1, 400 do
      local s = screen()
      if s:find(needle, 1, true) then return s end
      sh('sleep 0.05')
    end
    return screen()
  end

  setup(function()
    sh(("tmux new-session -d -s %s -x 120 -y 50 'DIFFRL_HISTORY=%s %s; echo EXIT=$?; sleep 30'")
      :format(session, history, bin))
    wait_for('Ctrl-D exits')
  end)
  teardown(function()
    sh('tmux kill-session -t ' .. session)
    os.remove(history)
  end)

  it('prints expressions, with tensors as PyTorch prints them', function()
    line('a = dr.tensor{{1,2},{3,4}}')
    line('a:matmul(a)')
    local s = wait_for('[15., 22.]])')
    assert.truthy(s:find('tensor([[ 7., 10.],\n        [15., 22.]])', 1, true))
    line('= 6 * 7')
    assert.truthy(wait_for('\n42'):find('\n42', 1, true))
  end)

  it('continues unfinished statements on the next line', function()
    line('for i = 1, 3 do')
    line('io.write("i=", i, ";")')
    line('end')
    assert.truthy(wait_for('i=1;i=2;i=3;'):find('>> end', 1, true))
  end)

  it('completes dr. names with Tab', function()
    keys({ literal = 'dr.ze' }, 'Tab', { literal = '(2)' }, 'Enter')
    assert.truthy(wait_for('dr.zeros(2)'):find('tensor([0., 0.])', 1, true))
  end)

  it('prints errors and goes on', function()
    line('dr.ones(2, 3):matmul(dr.ones(2, 3))')
    local s = wait_for('cannot be multiplied')
    assert.truthy(s:find('matmul: shapes [2, 3] and [2, 3]', 1, true))
    line('print("still " .. "here")')
    assert.truthy(wait_for('still here'):find('still here', 1, true))
  end)

  it('turns Ctrl-C into an error that ends only the running statement', function()
    line('jit.off() n = 0 while true do n = n + 1 end')
    sh('sleep 0.3')
    keys('C-c')
    local s = wait_for('interrupted')
    assert.truthy(s:find('interrupted', 1, true), s)
    line('print("alive=" .. tostring(n > 0))')
    assert.truthy(wait_for('alive=true'):find('alive=true', 1, true))
    line('jit.on()')
  end)

  it('exits with code 0 on Ctrl-D and keeps the history', function()
    keys('C-d')
    assert.truthy(wait_for('EXIT='):find('EXIT=0', 1, true))
    local f = io.open(history)
    local text = f and f:read('*a') or ''
    if f then f:close() end
    assert.truthy(text:find('a:matmul(a)', 1, true))
  end)
end)
