/* `diffrl.host`: what only the host can give Lua — line editing (libedit, BSD
 * licensed) with history and tab completion, TTY checks, and calls that Ctrl-C
 * interrupts with a Lua error instead of killing the process (as lua.c does). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>

/* ---- line editing ------------------------------------------------------- */

static lua_State *completion_L;
static int completer_ref = LUA_NOREF;

/* Candidates for `text` from the Lua completer, handed out one per call as
 * readline's generator protocol wants. */
static char *completion_generator(const char *text, int state) {
    static int next, count;
    lua_State *L = completion_L;
    if (!L || completer_ref == LUA_NOREF) return NULL;
    if (state == 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, completer_ref);
        lua_pushstring(L, text);
        lua_pushstring(L, rl_line_buffer ? rl_line_buffer : "");
        if (lua_pcall(L, 2, 1, 0) != 0 || !lua_istable(L, -1)) {
            lua_pop(L, 1);
            return NULL;
        }
        lua_setfield(L, LUA_REGISTRYINDEX, "diffrl.host.completions");
        next = 1;
        count = -1;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, "diffrl.host.completions");
    if (count < 0) count = (int)lua_objlen(L, -1);
    char *result = NULL;
    if (next <= count) {
        lua_rawgeti(L, -1, next++);
        const char *s = lua_tostring(L, -1);
        if (s) result = strdup(s);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return result;
}

static char **attempt_completion(const char *text, int start, int end) {
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1; /* never fall back to file names */
    return rl_completion_matches(text, completion_generator);
}

/* host.readline(prompt) -> line or nil at end of input */
static int l_readline(lua_State *L) {
    const char *prompt = luaL_optstring(L, 1, "> ");
    completion_L = L;
    char *line = readline(prompt);
    completion_L = NULL;
    if (!line) return 0;
    lua_pushstring(L, line);
    free(line);
    return 1;
}

static int l_add_history(lua_State *L) {
    add_history(luaL_checkstring(L, 1));
    return 0;
}

static int l_read_history(lua_State *L) {
    lua_pushboolean(L, read_history(luaL_checkstring(L, 1)) == 0);
    return 1;
}

static int l_write_history(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int limit = (int)luaL_optinteger(L, 2, 1000);
    stifle_history(limit);
    lua_pushboolean(L, write_history(path) == 0);
    return 1;
}

/* host.set_completer(function(word, line) -> {candidates}) */
static int l_set_completer(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (completer_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, completer_ref);
    lua_pushvalue(L, 1);
    completer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    rl_readline_name = "diffrl";
    /* '.' and ':' stay inside a word so "dr.ten" completes as one name */
    rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(+-*/%^~#,[]";
    rl_completion_append_character = '\0';
    rl_attempted_completion_function = attempt_completion;
    return 0;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* ---- interruptible calls ------------------------------------------------ */

static lua_State *interrupt_L;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
    (void)sig;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C kills, as in lua.c */
    if (interrupt_L)
        lua_sethook(interrupt_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_isstring(L, -1)) return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* host.xpcall(f, ...) -> true, results... | false, message-with-traceback.
 * Ctrl-C during f raises "interrupted" inside it. */
static int l_xpcall(lua_State *L) {
    int nargs = lua_gettop(L) - 1;
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_pushcfunction(L, traceback);
    lua_insert(L, 1);
    lua_State *saved = interrupt_L;
    interrupt_L = L;
    void (*old)(int) = signal(SIGINT, on_sigint);
    int status = lua_pcall(L, nargs, LUA_MULTRET, 1);
    signal(SIGINT, old);
    interrupt_L = saved;
    lua_sethook(L, NULL, 0, 0);
    lua_pushboolean(L, status == 0);
    lua_replace(L, 1); /* the handler's slot becomes the status */
    return lua_gettop(L);
}

int luaopen_diffrl_host(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"readline", l_readline},       {"add_history", l_add_history},
        {"read_history", l_read_history}, {"write_history", l_write_history},
        {"set_completer", l_set_completer}, {"isatty", l_isatty},
        {"xpcall", l_xpcall},           {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushstring(L, DIFFRL_SOURCE_DIR);
    lua_setfield(L, -2, "source_dir");
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        lua_pushlstring(L, exe, (size_t)len);
        lua_setfield(L, -2, "executable");
    }
    return 1;
}
