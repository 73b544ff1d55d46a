/* The `diffrl` host: LuaJIT with libdiffrl linked in and the Lua library on its
 * path. Everything user-facing (commands, options, the REPL) is Lua in
 * lua/diffrl/cli; this file only builds the interpreter and hands it argv. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_diffrl_host(lua_State *L);

static int file_exists(const char *path) { return access(path, R_OK) == 0; }

/* Directory holding this executable, from /proc/self/exe. */
static void exe_dir(char *buf, size_t n) {
    ssize_t len = readlink("/proc/self/exe", buf, n - 1);
    if (len <= 0) {
        snprintf(buf, n, ".");
        return;
    }
    buf[len] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash) *slash = '\0';
}

/* Installed layout first (<prefix>/bin/diffrl next to <prefix>/share/lua/5.1),
 * then the source tree this binary was built from. Sets DIFFRL_LUA_DIRS global
 * (for `diffrl --version` and error hints) and prepends them to package.path. */
static void set_lua_path(lua_State *L) {
    char dir[PATH_MAX], probe[PATH_MAX + 64], dirs[3 * PATH_MAX + 64];
    exe_dir(dir, sizeof dir);
    snprintf(probe, sizeof probe, "%s/../share/lua/5.1/diffrl/init.lua", dir);
    if (file_exists(probe)) {
        snprintf(dirs, sizeof dirs, "%s/../share/lua/5.1", dir);
    } else {
        snprintf(dirs, sizeof dirs, "%s/bindings/lua;%s/lua", DIFFRL_SOURCE_DIR, DIFFRL_SOURCE_DIR);
    }
    /* "<d>/?.lua;<d>/?/init.lua;" for each dir, before the default path */
    char prefix[4 * sizeof dirs], copy[sizeof dirs], *save = NULL;
    size_t n = 0;
    prefix[0] = '\0';
    snprintf(copy, sizeof copy, "%s", dirs);
    for (char *d = strtok_r(copy, ";", &save); d; d = strtok_r(NULL, ";", &save))
        n += (size_t)snprintf(prefix + n, sizeof prefix - n, "%s/?.lua;%s/?/init.lua;", d, d);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s%s", prefix, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    lua_pushstring(L, dirs);
    lua_setglobal(L, "DIFFRL_LUA_DIRS");
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int main(int argc, char **argv) {
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "diffrl: cannot create a Lua state (out of memory)\n");
        return 1;
    }
    luaL_openlibs(L);
    set_lua_path(L);

    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_diffrl_host);
    lua_setfield(L, -2, "diffrl.host");
    lua_pop(L, 2);

    /* return require('diffrl.cli').main({argv...}) */
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "diffrl.cli");
    int status = lua_pcall(L, 1, 1, 1);
    if (status == 0) {
        lua_getfield(L, -1, "main");
        lua_createtable(L, argc, 0);
        for (int i = 0; i < argc; i++) {
            lua_pushstring(L, argv[i]);
            lua_rawseti(L, -2, i);
        }
        status = lua_pcall(L, 1, 1, 1);
    }
    int code;
    if (status != 0) {
        fprintf(stderr, "diffrl: %s\n", lua_tostring(L, -1));
        code = 1;
    } else {
        code = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    }
    fflush(stdout);
    lua_close(L);
    return code;
}
