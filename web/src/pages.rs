//! The console's pages, as server-rendered HTML: no script, no asset from elsewhere (the
//! Content-Security-Policy says `default-src 'self'`). Every value from vmmd or a user is
//! escaped.

use hull_spec::api::NicTag;
use hull_spec::{ImageManifest, ValidationReport, Vm};
use serde_json::Value;

/// `s` with HTML's five special characters escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page's beginning, up to and with `<body>`.
fn head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} - hull</title><link rel=\"stylesheet\" href=\"/style.css\"></head><body>",
        esc(title)
    )
}

fn page(title: &str, body: &str) -> String {
    format!("{}{body}</body></html>\n", head(title))
}

/// The pages' style sheet, served as `/style.css` (the Content-Security-Policy allows no
/// inline style).
pub const STYLE: &str = "body{font:15px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
.err{color:#a00}.ok{color:#060}form.inline{display:inline}button{margin-right:.3em}\
nav a{margin-right:1em}textarea{font:13px monospace;width:100%}code{font-size:13px}";

/// The bar every page after login has: the pages, who is logged in, and logging out.
fn nav(user: &str, csrf: &str) -> String {
    format!(
        "<nav><a href=\"/\" id=\"nav-guests\">Guests</a><a href=\"/create\" id=\"nav-create\">Create</a>\
         <a href=\"/images\" id=\"nav-images\">Images</a><a href=\"/network\" id=\"nav-network\">Network</a>\
         <a href=\"/events\" id=\"nav-events\">Events</a>\
         Logged in as {} <form class=\"inline\" method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button id=\"logout\">Log out</button></form></nav>",
        esc(user)
    )
}

/// A button posting `action` (with the CSRF token and `extra` hidden fields) to `to`.
fn button(to: &str, csrf: &str, id: &str, label: &str, extra: &[(&str, &str)]) -> String {
    let hidden: String = extra
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{hidden}\
         <button id=\"{}\">{}</button></form>",
        esc(to),
        esc(id),
        esc(label)
    )
}

/// A JSON value as one line of text (strings without their quotes).
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// A validation report as a list, each finding with its property.
pub fn report(r: &ValidationReport) -> String {
    let mut items = String::new();
    if let Some(b) = &r.bad_brand {
        items.push_str(&format!(
            "<li><code>brand</code>: unknown brand {}</li>",
            esc(b)
        ));
    }
    for p in &r.details {
        items.push_str(&format!(
            "<li><code>{}</code>: {}</li>",
            esc(&p.property),
            esc(&p.message)
        ));
    }
    for (what, list) in [
        ("bad value", &r.bad_values),
        ("not allowed", &r.bad_properties),
        ("missing", &r.missing_properties),
    ] {
        for p in list {
            if !r.details.iter().any(|d| &d.property == p) {
                items.push_str(&format!("<li><code>{}</code>: {what}</li>", esc(p)));
            }
        }
    }
    format!("<ul class=\"err\" id=\"report\">{items}</ul>")
}

/// The login form, with a message (a refusal) when there is one.
pub fn login(message: Option<&str>) -> String {
    let note = message
        .map(|m| format!("<p class=\"err\" id=\"message\">{}</p>", esc(m)))
        .unwrap_or_default();
    page(
        "Log in",
        &format!(
            "<h1>hull</h1>{note}<form method=\"post\" action=\"/login\">\
             <p><label>User <input name=\"user\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\" id=\"login\">Log in</button></p></form>"
        ),
    )
}

/// The host's figures the dashboard shows, from vmmd's Prometheus exposition (node_exporter's
/// names).
#[derive(Debug, Default, PartialEq)]
pub struct Host {
    /// node_load1, 5, 15.
    pub load: [f64; 3],
    /// CPUs (the distinct `cpu` labels of node_cpu_seconds_total).
    pub cpus: usize,
    /// Memory: total and available bytes.
    pub memory: (f64, f64),
    /// The data root's file system: size and available bytes.
    pub disk: (f64, f64),
    /// Bytes received and sent by every network device but loopback, since boot.
    pub network: (f64, f64),
}

impl Host {
    /// The figures of an exposition (lines `name{labels} value`; comments skipped).
    pub fn from_exposition(text: &str) -> Host {
        let mut h = Host::default();
        let mut cpus = std::collections::BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                    .and_then(|v| v.split('"').next())
                    .map(str::to_string)
            };
            match name {
                "node_load1" => h.load[0] = value,
                "node_load5" => h.load[1] = value,
                "node_load15" => h.load[2] = value,
                "node_memory_MemTotal_bytes" => h.memory.0 = value,
                "node_memory_MemAvailable_bytes" => h.memory.1 = value,
                "node_filesystem_size_bytes" => h.disk.0 = value,
                "node_filesystem_avail_bytes" => h.disk.1 = value,
                "node_cpu_seconds_total" => {
                    if let Some(c) = label("cpu") {
                        cpus.insert(c);
                    }
                }
                "node_network_receive_bytes_total" | "node_network_transmit_bytes_total"
                    if label("device").as_deref() != Some("lo") =>
                {
                    match name.contains("receive") {
                        true => h.network.0 += value,
                        false => h.network.1 += value,
                    }
                }
                _ => {}
            }
        }
        h.cpus = cpus.len();
        h
    }
}

/// `bytes` in the binary unit that suits it (`1.5 GiB`).
pub fn size(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes.max(0.0);
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{v:.0} B"),
        _ => format!("{v:.1} {}", units[u]),
    }
}

fn host_table(h: &Host) -> String {
    let used = |(total, free): (f64, f64)| {
        let pct = if total > 0.0 {
            (total - free) * 100.0 / total
        } else {
            0.0
        };
        format!("{} of {} used ({pct:.0}%)", size(total - free), size(total))
    };
    format!(
        "<h2>Host</h2><table id=\"host\">\
         <tr><th>CPU</th><td id=\"host-cpu\">{} CPUs, load {:.2} {:.2} {:.2}</td></tr>\
         <tr><th>Memory</th><td id=\"host-memory\">{}</td></tr>\
         <tr><th>Disk (data root)</th><td id=\"host-disk\">{}</td></tr>\
         <tr><th>Network</th><td id=\"host-network\">{} received, {} sent since boot</td></tr></table>",
        h.cpus,
        h.load[0],
        h.load[1],
        h.load[2],
        used(h.memory),
        used(h.disk),
        size(h.network.0),
        size(h.network.1),
    )
}

/// The dashboard: the host's figures, and the guests, each with its state and the buttons
/// its state allows.
pub fn dashboard(user: &str, csrf: &str, host: Option<&Host>, vms: &[Vm]) -> String {
    let mut rows = String::new();
    for vm in vms {
        let uuid = vm.uuid.to_string();
        let ips: Vec<String> = vm
            .nics
            .iter()
            .flat_map(|n| n.ips.iter().flatten().cloned().chain(n.ip.clone()))
            .collect();
        let button = |action: &str| {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/vms/{uuid}/{action}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button id=\"{action}-{uuid}\">{action}</button></form>"
            )
        };
        let actions = match vm.state.as_str() {
            "running" => button("stop"),
            "stopped" => button("start"),
            _ => String::new(),
        };
        rows.push_str(&format!(
            "<tr id=\"vm-{uuid}\"><td><a href=\"/vms/{uuid}\">{}</a></td><td>{}</td><td>{}</td>\
             <td class=\"state\">{}</td><td>{}</td><td>{actions}</td></tr>",
            esc(&uuid),
            esc(vm.alias.as_deref().unwrap_or("")),
            esc(&vm.brand.to_string()),
            esc(vm.state.as_str()),
            esc(&ips.join(", ")),
        ));
    }
    page(
        "Guests",
        &format!(
            "<h1>hull</h1>{}{}\
             <h2>Guests</h2><table><tr><th>UUID</th><th>Alias</th><th>Brand</th>\
             <th>State</th><th>Addresses</th><th></th></tr>{rows}</table>",
            nav(user, csrf),
            host.map(host_table).unwrap_or_default(),
        ),
    )
}

/// One guest: its properties, NICs, disks, metadata and snapshots, the actions its state
/// allows, and an update form (a JSON payload, validated as `vmadm update` validates).
/// `message`: what the last action said (a refusal with its report).
pub fn guest(
    user: &str,
    csrf: &str,
    vm: &Vm,
    message: Option<(&str, Option<&ValidationReport>)>,
) -> String {
    let uuid = vm.uuid.to_string();
    let v = serde_json::to_value(vm).unwrap_or(Value::Null);
    let act = |action: &str| {
        button(
            &format!("/vms/{uuid}/{action}"),
            csrf,
            &format!("{action}-{uuid}"),
            action,
            &[],
        )
    };
    let actions: Vec<String> = match vm.state.as_str() {
        "running" => std::iter::once(format!(
            "<a href=\"/vms/{uuid}/console\" id=\"console-{uuid}\">Console</a> "
        ))
        .chain(["stop", "reboot", "kill"].iter().map(|a| act(a)))
        .collect(),
        "stopped" => vec![act("start")],
        _ => Vec::new(),
    };
    let mut props = String::new();
    if let Some(o) = v.as_object() {
        for (k, val) in o {
            if [
                "nics",
                "disks",
                "customer_metadata",
                "internal_metadata",
                "snapshots",
            ]
            .contains(&k.as_str())
                || val.is_object()
                || val.is_array()
            {
                continue;
            }
            props.push_str(&format!(
                "<tr><th>{}</th><td id=\"prop-{}\">{}</td></tr>",
                esc(k),
                esc(k),
                esc(&plain(val))
            ));
        }
    }
    let table = |rows: &[Value], cols: &[&str]| {
        let head: String = cols
            .iter()
            .map(|c| format!("<th>{}</th>", esc(c)))
            .collect();
        let body: String = rows
            .iter()
            .map(|r| {
                let cells: String = cols
                    .iter()
                    .map(|c| format!("<td>{}</td>", esc(&plain(&r[c]))))
                    .collect();
                format!("<tr>{cells}</tr>")
            })
            .collect();
        format!("<table><tr>{head}</tr>{body}</table>")
    };
    let empty = Vec::new();
    let nics = table(
        v["nics"].as_array().unwrap_or(&empty),
        &["interface", "mac", "nic_tag", "ips", "gateways", "primary"],
    );
    let disks = table(
        v["disks"].as_array().unwrap_or(&empty),
        &["path", "size", "image_uuid", "model", "boot"],
    );
    let metadata: String = vm
        .customer_metadata
        .iter()
        .map(|(k, val)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(val)))
        .collect();
    let snapshots: String = vm
        .snapshots
        .iter()
        .map(|s| {
            let name = s.name.as_str();
            format!(
                "<tr><td>{}</td><td>{}{}</td></tr>",
                esc(name),
                button(
                    &format!("/vms/{uuid}/rollback"),
                    csrf,
                    &format!("rollback-{name}"),
                    "rollback",
                    &[("name", name)]
                ),
                button(
                    &format!("/vms/{uuid}/delete-snapshot"),
                    csrf,
                    &format!("delete-snapshot-{name}"),
                    "delete",
                    &[("name", name)]
                ),
            )
        })
        .collect();
    let note = match message {
        Some((m, r)) => format!(
            "<p class=\"err\" id=\"message\">{}</p>{}",
            esc(m),
            r.map(report).unwrap_or_default()
        ),
        None => String::new(),
    };
    let title = vm.alias.clone().unwrap_or_else(|| uuid.clone());
    page(
        &title,
        &format!(
            "<h1>hull</h1>{}<h2 id=\"guest\">{}</h2>{note}\
             <p id=\"actions\">{}</p>\
             <h3>Properties</h3><table id=\"properties\">{props}</table>\
             <h3>NICs</h3>{nics}<h3>Disks</h3>{disks}\
             <h3>Metadata</h3><table id=\"metadata\">{metadata}</table>\
             <h3>Snapshots</h3><table id=\"snapshots\">{snapshots}</table>\
             <form method=\"post\" action=\"/vms/{uuid}/snapshot\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Name <input name=\"name\" id=\"snapshot-name\" required></label> \
             <button id=\"snapshot\">Take a snapshot</button></form>\
             <h3>Update</h3><form method=\"post\" action=\"/vms/{uuid}/update\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p>A payload as <code>vmadm update</code> takes it, such as \
             <code>{{\"alias\": \"web\", \"max_physical_memory\": 512}}</code>.</p>\
             <textarea name=\"payload\" id=\"update-payload\" rows=\"6\"></textarea>\
             <p><button id=\"update\">Update</button></p></form>\
             <h3>Delete</h3><form method=\"post\" action=\"/vms/{uuid}/delete\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" id=\"delete-confirm\" required> \
             delete this guest and its data</label> <button id=\"delete-{uuid}\">Delete</button></form>",
            nav(user, csrf),
            esc(&title),
            actions.join(""),
        ),
    )
}

/// The create page: a form for the usual properties (brand, image, alias, memory, a NIC)
/// that fills the JSON payload, the payload itself to edit, and what validation said.
#[derive(Debug)]
pub struct CreateForm<'a> {
    /// The installed images to pick from.
    pub images: &'a [ImageManifest],
    /// The nic tags to pick from.
    pub tags: &'a [NicTag],
    /// The payload in the editor.
    pub payload: &'a str,
    /// A refusal: the message and the report.
    pub refused: Option<(&'a str, Option<&'a ValidationReport>)>,
    /// The payload validated.
    pub valid: bool,
}

/// The create page (module docs: the form's fields fill the payload, which is what is sent).
pub fn create(user: &str, csrf: &str, f: &CreateForm) -> String {
    let images: String = f
        .images
        .iter()
        .map(|m| {
            let kind = plain(&serde_json::to_value(m.image_type).unwrap_or(Value::Null));
            format!(
                "<option value=\"{}\">{} {} ({})</option>",
                m.uuid,
                esc(&m.name),
                esc(&m.version),
                esc(&kind)
            )
        })
        .collect();
    let tags: String = std::iter::once("<option value=\"\">(none)</option>".to_string())
        .chain(f.tags.iter().map(|t| {
            format!(
                "<option value=\"{}\">{}</option>",
                esc(&t.name),
                esc(&t.name)
            )
        }))
        .collect();
    let brands: String = ["joyent-minimal", "joyent", "lx", "bhyve", "kvm"]
        .iter()
        .map(|b| format!("<option>{b}</option>"))
        .collect();
    let note = match (&f.refused, f.valid) {
        (Some((m, r)), _) => format!(
            "<p class=\"err\" id=\"message\">{}</p>{}",
            esc(m),
            r.map(report).unwrap_or_default()
        ),
        (None, true) => "<p class=\"ok\" id=\"message\">The payload is valid.</p>".into(),
        (None, false) => String::new(),
    };
    page(
        "Create",
        &format!(
            "<h1>hull</h1>{}<h2>Create a guest</h2>\
             <form method=\"post\" action=\"/create\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <input type=\"hidden\" name=\"do\" value=\"fill\">\
             <table><tr><th>Brand</th><td><select name=\"brand\" id=\"brand\">{brands}</select> \
             (a zone: joyent, joyent-minimal, lx; a microVM: bhyve, kvm)</td></tr>\
             <tr><th>Image</th><td><select name=\"image\" id=\"image\">{images}</select></td></tr>\
             <tr><th>Alias</th><td><input name=\"alias\" id=\"alias\"></td></tr>\
             <tr><th>Memory (MiB)</th><td><input name=\"memory\" id=\"memory\" value=\"256\"></td></tr>\
             <tr><th>NIC tag</th><td><select name=\"nic_tag\" id=\"nic_tag\">{tags}</select> (its address by DHCP)</td></tr>\
             </table><p><button id=\"fill\">Make the payload</button></p></form>\
             <form method=\"post\" action=\"/create\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <h3>Payload</h3>{note}\
             <textarea name=\"payload\" id=\"payload\" rows=\"14\">{}</textarea>\
             <p><button name=\"do\" value=\"validate\" id=\"validate\">Validate</button>\
             <button name=\"do\" value=\"create\" id=\"create\">Create</button></p></form>",
            nav(user, csrf),
            esc(f.payload),
        ),
    )
}

/// The images installed, and those the image sources offer (or why they cannot be listed).
pub fn images(
    user: &str,
    csrf: &str,
    installed: &[ImageManifest],
    available: Result<&[ImageManifest], &str>,
) -> String {
    let rows = |list: &[ImageManifest], install: bool| -> String {
        list.iter()
            .map(|m| {
                let kind = plain(&serde_json::to_value(m.image_type).unwrap_or(Value::Null));
                let uuid = m.uuid.to_string();
                let action = match install {
                    true => button("/images/import", csrf, &format!("import-{uuid}"), "import", &[("uuid", &uuid)]),
                    false => String::new(),
                };
                format!(
                    "<tr id=\"image-{uuid}\"><td>{uuid}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                    esc(&m.name),
                    esc(&m.version),
                    esc(&kind),
                    esc(&m.os),
                )
            })
            .collect()
    };
    let head =
        "<tr><th>UUID</th><th>Name</th><th>Version</th><th>Type</th><th>OS</th><th></th></tr>";
    let available = match available {
        Ok(list) => format!("<table id=\"available\">{head}{}</table>", rows(list, true)),
        Err(e) => format!("<p class=\"err\" id=\"available\">{}</p>", esc(e)),
    };
    page(
        "Images",
        &format!(
            "<h1>hull</h1>{}<h2>Installed images</h2><table id=\"installed\">{head}{}</table>\
             <h2>Available from the image sources</h2>{available}",
            nav(user, csrf),
            rows(installed, false),
        ),
    )
}

/// The nic tags (hull's networks: a bridge each, with its uplink if it has one), each with
/// a delete button, and a form adding one; `message`: what the last change said.
pub fn network(user: &str, csrf: &str, tags: &[NicTag], message: Option<&str>) -> String {
    let rows: String = tags
        .iter()
        .map(|t| {
            format!(
                "<tr id=\"tag-{}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.name),
                esc(&t.name),
                esc(t.uplink.as_deref().unwrap_or("(none: host-only)")),
                button(
                    "/network/delete",
                    csrf,
                    &format!("delete-tag-{}", t.name),
                    "delete",
                    &[("name", &t.name)]
                ),
            )
        })
        .collect();
    let note = message
        .map(|m| format!("<p class=\"err\" id=\"message\">{}</p>", esc(m)))
        .unwrap_or_default();
    page(
        "Network",
        &format!(
            "<h1>hull</h1>{}<h2>NIC tags</h2>{note}<table id=\"nictags\"><tr><th>Name</th>\
             <th>Uplink</th><th></th></tr>{rows}</table>\
             <h3>Add a NIC tag</h3><form method=\"post\" action=\"/network/add\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Name <input name=\"name\" id=\"tag-name\" required></label> \
             <label>Uplink <input name=\"uplink\" id=\"tag-uplink\"></label> \
             (a host interface; empty for a switch of this host's guests alone) \
             <button id=\"add-tag\">Add</button></form>",
            nav(user, csrf)
        ),
    )
}

/// The events page up to its table's head; [`event_row`]s follow as they happen.
pub fn events_head(user: &str, csrf: &str) -> String {
    format!(
        "{}<h1>hull</h1>{}<h2>Events as they happen</h2><table id=\"events\"><tr>\
         <th>When</th><th>Event</th><th>Guest</th><th>Alias</th><th>State</th>\
         <th>Changed</th></tr>\n",
        head("Events"),
        nav(user, csrf)
    )
}

/// One event as a row of the events page.
pub fn event_row(e: &hull_spec::Event) -> String {
    let kind = plain(&serde_json::to_value(e.kind).unwrap_or(Value::Null));
    format!(
        "<tr class=\"event-{}\"><td>{}</td><td>{}</td><td><a href=\"/vms/{}\">{}</a></td>\
         <td>{}</td><td>{}</td><td>{}</td></tr>\n",
        esc(&kind),
        esc(&e.timestamp),
        esc(&kind),
        e.uuid,
        e.uuid,
        esc(e.alias.as_deref().unwrap_or("")),
        esc(e.state.map(|s| s.as_str()).unwrap_or("")),
        esc(&e.changes.join(", ")),
    )
}

/// The end of the events page, saying why it ended.
pub fn events_tail(why: &str) -> String {
    format!(
        "</table><p class=\"err\" id=\"message\">{} (reload to follow again)</p></body></html>\n",
        esc(why)
    )
}

/// A page that says what went wrong (vmmd not answering, a refused change).
/// A guest's console: xterm.js (/assets/console.js) on the WebSocket at
/// `/vms/{uuid}/console/socket`, which carries the session's CSRF token in its query (the
/// server checks it and the Origin); Ctrl-] goes to the guest, the Disconnect button ends it.
pub fn console(user: &str, csrf: &str, vm: &Vm) -> String {
    let uuid = vm.uuid.to_string();
    let name = vm.alias.clone().unwrap_or_else(|| uuid.clone());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>Console of {name} - hull</title><link rel=\"stylesheet\" href=\"/style.css\">\
         <link rel=\"stylesheet\" href=\"/assets/xterm.css\">\
         <script type=\"module\" src=\"/assets/console.js\"></script></head><body>{nav}\
         <h1>Console of <a href=\"/vms/{uuid}\">{name}</a></h1>\
         <p><span id=\"console-status\" data-state=\"connecting\">connecting</span> \
         <button id=\"console-detach\" type=\"button\">Disconnect</button> \
         Keys go to the guest as typed, Ctrl-] too; Disconnect ends the session.</p>\
         <div id=\"console\" data-socket=\"/vms/{uuid}/console/socket?csrf={csrf}\"></div>\
         <p class=\"small\">xterm.js, MIT license: <a href=\"/assets/xterm.LICENSE\">its notice</a></p>\
         </body></html>\n",
        name = esc(&name),
        nav = nav(user, csrf),
    )
}

pub fn error(title: &str, message: &str) -> String {
    page(
        title,
        &format!(
            "<h1>hull</h1><p class=\"err\" id=\"message\">{}</p><p><a href=\"/\">Back</a></p>",
            esc(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_figures_come_from_node_exporters_names() {
        let text = "# TYPE node_load1 gauge\nnode_load1 0.5\nnode_load5 0.25\nnode_load15 0.125\n\
            node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 10\n\
            node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 2\n\
            node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"} 9\n\
            node_memory_MemTotal_bytes 4096\nnode_memory_MemAvailable_bytes 1024\n\
            node_filesystem_size_bytes{mountpoint=\"/var/lib/hull\"} 2048\n\
            node_filesystem_avail_bytes{mountpoint=\"/var/lib/hull\"} 512\n\
            node_network_receive_bytes_total{device=\"lo\"} 1000\n\
            node_network_receive_bytes_total{device=\"eth0\"} 300\n\
            node_network_receive_bytes_total{device=\"hb-admin\"} 200\n\
            node_network_transmit_bytes_total{device=\"eth0\"} 7\n";
        let h = Host::from_exposition(text);
        assert_eq!(
            h,
            Host {
                load: [0.5, 0.25, 0.125],
                cpus: 2,
                memory: (4096.0, 1024.0),
                disk: (2048.0, 512.0),
                network: (500.0, 7.0),
            }
        );
        assert_eq!(size(512.0), "512 B");
        assert_eq!(size(1536.0 * 1024.0 * 1024.0), "1.5 GiB");
        let page = dashboard("admin", "t", Some(&h), &[]);
        assert!(page.contains("2 CPUs, load 0.50 0.25 0.12"), "{page}");
        assert!(page.contains("3.0 KiB of 4.0 KiB used (75%)"), "{page}");
    }

    #[test]
    fn values_are_escaped() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let p = error("Oops", "<script>alert(1)</script>");
        assert!(!p.contains("<script>"), "{p}");
    }
}
