//! Argo CD's health check, `gitops/health/health.lua`, on a real Lua 5.1 interpreter set up like
//! Argo CD's sandbox; used by the health table tests and on live controller status.

use std::path::PathBuf;

use mlua::{Lua, LuaOptions, StdLib, Table};
use serde_json::Value;

pub fn health_dir() -> PathBuf {
    super::repo().join("gitops/health")
}

pub fn script() -> String {
    std::fs::read_to_string(health_dir().join("health.lua")).expect("read health.lua")
}

/// Argo CD (util/lua) opens only package, base and table, plus a safe `os` with `time` and `date`,
/// also what `require("os")` returns. No string, math, io or debug.
pub fn sandbox() -> Lua {
    let lua = Lua::new_with(StdLib::TABLE | StdLib::PACKAGE | StdLib::OS, LuaOptions::default()).expect("lua state");
    lua.load("local safe = { time = os.time, date = os.date }; os = safe; package.loaded.os = safe").exec().expect("restrict os");
    lua
}

/// Argo CD's decodeValue: JSON null is nil, every number is a Lua number, arrays are 1-based tables.
fn to_lua(lua: &Lua, v: &Value) -> mlua::Value {
    match v {
        Value::Null => mlua::Value::Nil,
        Value::Bool(b) => mlua::Value::Boolean(*b),
        Value::Number(n) => mlua::Value::Number(n.as_f64().expect("finite number")),
        Value::String(s) => mlua::Value::String(lua.create_string(s).expect("lua string")),
        Value::Array(items) => {
            let t = lua.create_table().expect("table");
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, to_lua(lua, item)).expect("set item");
            }
            mlua::Value::Table(t)
        }
        Value::Object(map) => {
            let t = lua.create_table().expect("table");
            for (k, item) in map {
                t.raw_set(k.as_str(), to_lua(lua, item)).expect("set field");
            }
            mlua::Value::Table(t)
        }
    }
}

/// Runs health.lua on `obj` the way Argo CD does: `obj` global, the chunk returns the status table.
pub fn health(obj: &Value) -> Result<(String, String), mlua::Error> {
    let lua = sandbox();
    lua.globals().set("obj", to_lua(&lua, obj))?;
    let hs: Table = lua.load(script()).set_name("health.lua").eval()?;
    Ok((hs.get("status")?, hs.get("message")?))
}
