//! The conversation a chat holds, independent of any terminal or model: messages, the system
//! prompt, and the edits `/undo`, `/retry` and `/clear` make.

/// Who said it, in the chat template's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The reply was cut short by Ctrl-C or the token limit.
    pub interrupted: bool,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    pub system: Option<String>,
    pub messages: Vec<Message>,
}

impl Conversation {
    pub fn push_user(&mut self, text: impl Into<String>) {
        self.messages.push(Message {
            role: Role::User,
            content: text.into(),
            interrupted: false,
        });
    }

    pub fn push_assistant(&mut self, text: impl Into<String>, interrupted: bool) {
        self.messages.push(Message {
            role: Role::Assistant,
            content: text.into(),
            interrupted,
        });
    }

    /// `(role, content)` pairs for the chat template, system prompt first.
    pub fn template_messages(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            out.push(("system".to_string(), s.clone()));
        }
        out.extend(
            self.messages
                .iter()
                .map(|m| (m.role.as_str().to_string(), m.content.clone())),
        );
        out
    }

    /// Drops the last exchange (the last user message and everything after it). Returns the user
    /// message it removed.
    pub fn undo(&mut self) -> Option<String> {
        let last_user = self.messages.iter().rposition(|m| m.role == Role::User)?;
        let removed = self.messages.drain(last_user..).next().map(|m| m.content);
        removed
    }

    /// Drops the last reply so the same user message can be answered again. Returns that message.
    pub fn retry(&mut self) -> Option<String> {
        let last_user = self.messages.iter().rposition(|m| m.role == Role::User)?;
        self.messages.truncate(last_user + 1);
        Some(self.messages[last_user].content.clone())
    }

    pub fn clear(&mut self) {
        self.messages.clear();
    }

    pub fn last_reply(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }

    /// Keeps only the last `n` exchanges (user message plus reply), for compaction.
    pub fn keep_last_turns(&mut self, n: usize) {
        let starts: Vec<usize> = self
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == Role::User)
            .map(|(i, _)| i)
            .collect();
        if starts.len() > n {
            let cut = starts[starts.len() - n];
            self.messages.drain(..cut);
        }
    }
}

/// The fenced code blocks of a markdown reply, in order (for `/write N PATH`).
pub fn code_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(String::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push_str(line);
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Conversation {
        let mut c = Conversation {
            system: Some("Be brief.".into()),
            ..Default::default()
        };
        c.push_user("one");
        c.push_assistant("reply one", false);
        c.push_user("two");
        c.push_assistant("reply two", true);
        c
    }

    #[test]
    fn template_messages_put_the_system_prompt_first() {
        let m = chat().template_messages();
        assert_eq!(m[0], ("system".to_string(), "Be brief.".to_string()));
        assert_eq!(m.len(), 5);
        assert_eq!(m[4].0, "assistant");
    }

    #[test]
    fn undo_retry_clear_and_compaction() {
        let mut c = chat();
        assert_eq!(c.retry().as_deref(), Some("two"));
        assert_eq!(c.messages.len(), 3);
        assert_eq!(c.undo().as_deref(), Some("two"));
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.last_reply(), Some("reply one"));
        let mut c = chat();
        c.keep_last_turns(1);
        assert_eq!(c.messages[0].content, "two");
        c.clear();
        assert!(c.undo().is_none());
        assert_eq!(c.system.as_deref(), Some("Be brief."));
    }

    #[test]
    fn code_blocks_are_found_in_order() {
        let text = "Here:\n```python\ndef f():\n    pass\n```\nand\n```\nx = 1\n```\n";
        assert_eq!(code_blocks(text), vec!["def f():\n    pass\n", "x = 1\n"]);
        assert!(code_blocks("no code").is_empty());
    }
}
