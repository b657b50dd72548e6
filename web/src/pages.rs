//! The console's pages, as server-rendered HTML: no script, no asset from elsewhere (the
//! Content-Security-Policy says `default-src 'self'`). Every value from vmmd or a user is
//! escaped.

use hull_spec::Vm;

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

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} - hull</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(title)
    )
}

const STYLE: &str = "body{font:15px system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}\
.err{color:#a00}form.inline{display:inline}button{margin-right:.3em}";

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

/// The dashboard: the guests, each with its state and the buttons its state allows.
pub fn dashboard(user: &str, csrf: &str, vms: &[Vm]) -> String {
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
            "<tr id=\"vm-{uuid}\"><td>{}</td><td>{}</td><td>{}</td>\
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
            "<h1>hull</h1><p>Logged in as {} \
             <form class=\"inline\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button id=\"logout\">Log out</button></form></p>\
             <h2>Guests</h2><table><tr><th>UUID</th><th>Alias</th><th>Brand</th>\
             <th>State</th><th>Addresses</th><th></th></tr>{rows}</table>",
            esc(user)
        ),
    )
}

/// A page that says what went wrong (vmmd not answering, a refused change).
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
    fn values_are_escaped() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let p = error("Oops", "<script>alert(1)</script>");
        assert!(!p.contains("<script>"), "{p}");
    }
}
