//! Chat templates: the Jinja template a model's tokenizer_config.json (or
//! chat_template.jinja beside it) carries, rendered as transformers'
//! `apply_chat_template(messages, add_generation_prompt=True)` does, with minijinja and
//! its Python-compatibility methods (`.strip()`, `.items()`, ...).

use std::path::Path;

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": ...}`.
fn token_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The folder's template, if it has one; a template that does not compile is an
    /// error naming the file.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, String> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", config_path.display()))?,
            Err(_) => Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, from) = match config.get("chat_template") {
            Some(Value::String(s)) => (s.clone(), config_path.clone()),
            // A list of named templates: the default one.
            Some(Value::Array(list)) => match list.iter().find(|t| t["name"] == "default") {
                Some(t) => (
                    t["template"].as_str().unwrap_or_default().to_string(),
                    config_path.clone(),
                ),
                None => return Ok(None),
            },
            _ if jinja.is_file() => (
                std::fs::read_to_string(&jinja).map_err(|e| format!("{}: {e}", jinja.display()))?,
                jinja,
            ),
            _ => return Ok(None),
        };
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source).map_err(|e| {
            format!(
                "{}: the chat template does not compile: {e}",
                from.display()
            )
        })?;
        Ok(Some(Self {
            env,
            bos: token_text(config.get("bos_token")),
            eos: token_text(config.get("eos_token")),
        }))
    }

    /// The template's end-of-turn token as an id, when the tokenizer has it: generation
    /// stops there as at EOS (a ChatML `<|im_end|>` is often not config.json's EOS).
    pub fn eos_id(&self, tok: &crate::tokenizer::Tokenizer) -> Option<u32> {
        (!self.eos.is_empty())
            .then(|| tok.token_to_id(&self.eos))
            .flatten()
    }

    /// The prompt for `messages` ({"role", "content"} objects), ending where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[Value]) -> Result<String, String> {
        let t = self.env.get_template("chat").map_err(|e| e.to_string())?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| format!("the model's chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_a_chatml_template_from_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'].strip() }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"chat_template": template, "eos_token": {"content": "<|im_end|>"}}).to_string(),
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.eos, "<|im_end|>");
        let out = t
            .render(&[json!({"role": "user", "content": " hi "})])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn no_template_is_none_and_raise_exception_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "{{ raise_exception('only user turns') }}",
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        let err = t.render(&[]).unwrap_err();
        assert!(err.contains("only user turns"), "{err}");
    }
}
