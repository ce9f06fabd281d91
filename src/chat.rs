//! The conversation a chat holds, independent of any terminal, HTTP request or model: messages,
//! the system prompt, the edits `/undo`, `/retry` and `/clear` make, and the one "turn" path
//! that `run`, the REPL and the server share: render → tokenize → reuse the cached prefix →
//! generate → stats.

use crate::engine::{Engine, EngineError, GenerateOptions, GenerationStats, Generator, Session};
use crate::prompt;

/// Who said it, in the chat template's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant`; anything else is not a role a chat template knows.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }

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

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            interrupted: false,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    pub system: Option<String>,
    pub messages: Vec<Message>,
    /// The first `pinned` messages are never dropped to make room (`/pin`).
    #[serde(default)]
    pub pinned: usize,
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

    /// Every message the template sees, system prompt first.
    pub fn template_messages(&self) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            out.push(Message::new(Role::System, s.clone()));
        }
        out.extend(self.messages.iter().cloned());
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
        self.pinned = 0;
    }

    /// Pins every message so far: a context shift never drops them.
    pub fn pin(&mut self) {
        self.pinned = self.messages.len();
    }

    /// Drops the oldest exchange after the pinned messages (a user message and the replies up
    /// to the next one), never the last user message. Returns how many messages went.
    pub fn drop_oldest_exchange(&mut self) -> Option<usize> {
        let pinned = self.pinned.min(self.messages.len());
        let users: Vec<usize> = (pinned..self.messages.len())
            .filter(|&i| self.messages[i].role == Role::User)
            .collect();
        // The exchange to drop must be followed by another user message.
        let (&start, &next) = (users.first()?, users.get(1)?);
        self.messages.drain(start..next);
        Some(next - start)
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
            self.pinned = self.pinned.saturating_sub(cut);
        }
    }
}

/// A generated reply and how it went.
#[derive(Debug, Clone)]
pub struct Turn {
    pub reply: String,
    pub stats: GenerationStats,
}

/// The assistant's reply to `messages` (system prompt first, as
/// [`Conversation::template_messages`] gives them): rendered with the model's template,
/// tokenized, generated after the cached prefix the session already holds. `on_text` gets each
/// piece of text; it or `cancel` returning true/false stops the reply (it is kept, marked by the
/// stats' stop reason).
pub fn reply(
    session: &mut Session<'_>,
    messages: &[Message],
    options: &GenerateOptions,
    cancel: impl Fn() -> bool,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Turn, EngineError> {
    let tokens = prompt::chat_tokens(session.engine(), messages)?;
    reply_to_tokens(session, &tokens, options, cancel, on_text)
}

/// [`reply`] to a chat already rendered into `tokens` (by [`prompt::chat_tokens`]), for a
/// caller that needed the tokens first (to check that they fit).
pub fn reply_to_tokens(
    session: &mut Session<'_>,
    tokens: &[i32],
    options: &GenerateOptions,
    cancel: impl Fn() -> bool,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Turn, EngineError> {
    let mut reply = String::new();
    let mut start = ReplyStart::default();
    let stats = Generator::new(session, tokens, options, cancel)?.drive(|t| {
        let t = start.piece(t);
        if t.is_empty() {
            return true;
        }
        reply.push_str(t);
        on_text(t)
    })?;
    Ok(Turn { reply, stats })
}

/// What [`fit_to_context`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// The rendered prompt, which fits.
    pub tokens: Vec<i32>,
    /// Exchanges dropped from the conversation to make it fit.
    pub dropped_exchanges: usize,
    /// Prompt tokens the dropped exchanges took.
    pub dropped_tokens: usize,
}

/// Fits the conversation, rendered as `tokens`, into a context of `n_ctx` with room for
/// `reserve` more tokens, dropping the oldest unpinned exchanges (and rendering again) as needed:
/// a context shift between turns. `None` when even the pinned messages and the last message
/// leave no room.
pub fn fit_to_context(
    engine: &Engine,
    conversation: &mut Conversation,
    mut tokens: Vec<i32>,
    n_ctx: usize,
    reserve: usize,
) -> Result<Option<Fit>, EngineError> {
    let first = tokens.len();
    let mut dropped_exchanges = 0;
    while tokens.len() + reserve >= n_ctx {
        if conversation.drop_oldest_exchange().is_none() {
            return Ok(None);
        }
        dropped_exchanges += 1;
        tokens = prompt::chat_tokens(engine, &conversation.template_messages())?;
    }
    Ok(Some(Fit {
        dropped_tokens: first.saturating_sub(tokens.len()),
        tokens,
        dropped_exchanges,
    }))
}

/// How many leading `tokens` (the rendered conversation) are the system prompt and the pinned
/// messages: what a shift keeps.
pub fn pinned_prefix(
    engine: &Engine,
    conversation: &Conversation,
    tokens: &[i32],
) -> Result<usize, EngineError> {
    let n_pinned = conversation.pinned.min(conversation.messages.len());
    let pinned = Conversation {
        system: conversation.system.clone(),
        messages: conversation.messages[..n_pinned].to_vec(),
        pinned: 0,
    };
    let head = prompt::chat_tokens(engine, &pinned.template_messages())?;
    Ok(head.iter().zip(tokens).take_while(|(a, b)| a == b).count())
}

/// Drops the space a reply starts with. The prompt ends with "Assistant:" and the template
/// renders a stored reply as "Assistant: {content}", so the model's first space belongs to the
/// template: kept out of the reply, the next turn's prompt is exactly the tokens the model
/// generated (the cache is reused through the whole reply), and clients see no stray space.
#[derive(Debug, Default)]
pub struct ReplyStart {
    seen_text: bool,
}

impl ReplyStart {
    /// The piece as it belongs in the reply.
    pub fn piece<'t>(&mut self, text: &'t str) -> &'t str {
        if self.seen_text {
            return text;
        }
        let t = text.strip_prefix(' ').unwrap_or(text);
        self.seen_text = !text.is_empty();
        t
    }
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
        assert_eq!(m[0], Message::new(Role::System, "Be brief."));
        assert_eq!(m.len(), 5);
        assert_eq!(m[4].role, Role::Assistant);
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
    fn a_full_context_drops_the_oldest_unpinned_exchange_never_the_last_message() {
        let mut c = chat();
        c.push_user("three");
        assert_eq!(c.drop_oldest_exchange(), Some(2));
        assert_eq!(c.messages[0].content, "two");
        assert_eq!(c.drop_oldest_exchange(), Some(2));
        assert_eq!(c.messages.len(), 1);
        assert_eq!(
            c.drop_oldest_exchange(),
            None,
            "the last user message stays"
        );

        let mut c = chat();
        c.pin();
        c.push_user("three");
        assert_eq!(c.drop_oldest_exchange(), None, "pinned exchanges stay");
        let mut c = chat();
        c.pinned = 2;
        c.push_user("three");
        assert_eq!(c.drop_oldest_exchange(), Some(2));
        assert_eq!(c.messages[0].content, "one");
        assert_eq!(c.messages[2].content, "three");
        c.keep_last_turns(1);
        assert_eq!(c.pinned, 0);
    }
}
