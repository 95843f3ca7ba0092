//! Header value templates (`"{consumer}"`, `"team-{claim:org}"`), parsed once at policy
//! compile time and rendered per decision.
//!
//! Rendered values are cleaned of control characters (a claim cannot smuggle a CR/LF into
//! a header) and capped in length. Placeholders never expose credentials: they name the
//! consumer, its groups, the route, the identity, the client IP or a verified claim.

/// Longest rendered header value.
pub const MAX_VALUE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Consumer,
    Groups,
    Route,
    Identity,
    Ip,
    Claim(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What placeholders render from.
#[derive(Debug, Default)]
pub struct Context<'a> {
    pub consumer: Option<&'a str>,
    pub groups: &'a [String],
    pub route: Option<&'a str>,
    pub identity: Option<&'a str>,
    pub ip: Option<String>,
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// A claim as text: strings as they are, arrays joined with commas, other JSON as JSON.
pub fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(claim_text).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            let name = &after[..close];
            parts.push(match name {
                "consumer" => Part::Consumer,
                "groups" => Part::Groups,
                "route" => Part::Route,
                "identity" => Part::Identity,
                "ip" => Part::Ip,
                n => match n.strip_prefix("claim:") {
                    Some(c) if !c.is_empty() => Part::Claim(c.to_string()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{n}}} (consumer, groups, route, identity, ip, claim:NAME)"
                        ))
                    }
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Text(t) if t.chars().any(char::is_control)))
        {
            return Err(format!("{text:?} contains a control character"));
        }
        Ok(Template { parts })
    }

    /// The rendered value, or `None` when it is empty (the header is then left out).
    pub fn render(&self, ctx: &Context<'_>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Consumer => out.push_str(ctx.consumer.unwrap_or("")),
                Part::Groups => out.push_str(&ctx.groups.join(",")),
                Part::Route => out.push_str(ctx.route.unwrap_or("")),
                Part::Identity => out.push_str(ctx.identity.unwrap_or("")),
                Part::Ip => {
                    if let Some(ip) = &ctx.ip {
                        out.push_str(ip)
                    }
                }
                Part::Claim(c) => {
                    if let Some(v) = ctx.claims.and_then(|m| m.get(c)) {
                        out.push_str(&claim_text(v))
                    }
                }
            }
        }
        let mut clean: String = out.chars().filter(|c| !c.is_control()).collect();
        if clean.len() > MAX_VALUE {
            let mut end = MAX_VALUE;
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean.truncate(end);
        }
        let clean = clean.trim().to_string();
        (!clean.is_empty()).then_some(clean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_and_drops_control_characters() {
        let t = Template::parse("{consumer}@{route} [{groups}] {claim:org}").unwrap();
        let groups = vec!["a".to_string(), "b".to_string()];
        let claims = serde_json::json!({"org": "acme\r\nx-evil: 1"});
        let ctx = Context {
            consumer: Some("alice"),
            groups: &groups,
            route: Some("api"),
            claims: claims.as_object(),
            ..Default::default()
        };
        assert_eq!(t.render(&ctx).unwrap(), "alice@api [a,b] acmex-evil: 1");
        assert_eq!(
            Template::parse("{consumer}")
                .unwrap()
                .render(&Context::default()),
            None
        );
        assert!(Template::parse("{nope}").is_err());
        assert!(Template::parse("{consumer").is_err());
    }
}
