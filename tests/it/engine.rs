//! The engine's seams, on real models: the step-wise generator (stop strings across token
//! boundaries, cancel, every stop reason) on the bundled nano model, whose greedy output is
//! pinned to transformers' by `nano.rs`; and the session's primitives for speculative decoding
//! (logits at several batch positions, sampling at a batch index, truncation) on the Lite-style
//! F32 fixture, against one-token-at-a-time evaluation.

use std::cell::Cell;
use std::path::PathBuf;

use dscoder::engine::{
    DraftMode, Engine, EngineSettings, GenerateOptions, Generator, Sampler, SamplingSettings,
    StopReason,
};

use crate::common::{self, ids};

fn nano() -> PathBuf {
    common::converted(&common::repo("nano/model"), "f32")
}

fn lite_f32() -> PathBuf {
    common::converted(&common::fixture("lite-tiny"), "f32")
}

/// The nano reference's prompts with the greedy output transformers produced.
fn nano_cases() -> Vec<(Vec<i32>, Vec<i32>, bool)> {
    let r = common::json(&common::repo("nano/reference.json"));
    r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                ids(&g["prompt_ids"]),
                ids(&g["output_ids"]),
                g["stopped_at_eos"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn greedy(max_tokens: usize, stop: &[String]) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingSettings::greedy(),
        max_tokens,
        stop: stop.to_vec(),
        draft: DraftMode::Off,
        context_shift: None,
    }
}

/// Pulls every piece from a generator; returns the pieces and the stats.
fn pieces(mut g: Generator<'_, '_>) -> (Vec<String>, dscoder::engine::GenerationStats) {
    let mut out = Vec::new();
    while let Some(t) = g.next_text().unwrap() {
        assert!(!t.is_empty());
        out.push(t);
    }
    (out, g.stats().clone())
}

#[test]
fn generator_stops_on_eos_and_at_the_token_limit() {
    let engine = Engine::load(&nano(), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    for (prompt, want, eos) in nano_cases() {
        let n = want.len();
        let g = Generator::new(&mut session, &prompt, &greedy(n + 1, &[]), || false).unwrap();
        let (_, stats) = pieces(g);
        if eos {
            assert_eq!(stats.stop_reason, StopReason::EndOfGeneration);
            assert_eq!(stats.tokens, want[..n - 1]);
        } else {
            assert_eq!(stats.stop_reason, StopReason::TokenLimit);
        }
        // A cap below the natural length: exactly that many tokens, reason "length".
        let g = Generator::new(&mut session, &prompt, &greedy(3, &[]), || false).unwrap();
        let (_, stats) = pieces(g);
        assert_eq!(stats.tokens, want[..3]);
        assert_eq!(stats.stop_reason, StopReason::TokenLimit);
        assert_eq!(stats.stop_reason.finish_reason(), "length");
        assert_eq!(
            stats.reused_tokens + 1,
            prompt.len(),
            "the same prompt again is reused"
        );
    }
}

#[test]
fn stop_strings_split_across_tokens_end_generation_and_are_not_emitted() {
    let engine = Engine::load(&nano(), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    let mut checked = 0;
    for (prompt, want, _) in nano_cases() {
        let full = engine.detokenize(&want);
        // A stop string made of the end of one token's text and the start of the next's.
        let Some(stop) = want.windows(2).find_map(|w| {
            let (a, b) = (engine.detokenize(&w[..1]), engine.detokenize(&w[1..]));
            let (ca, cb): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
            (ca.len() >= 2 && !cb.is_empty()).then(|| {
                ca[ca.len() - 2..]
                    .iter()
                    .chain(&cb[..cb.len().min(2)])
                    .collect::<String>()
            })
        }) else {
            continue;
        };
        let at = full.find(&stop).unwrap();
        let options = greedy(want.len() + 1, std::slice::from_ref(&stop));
        let (got, stats) =
            pieces(Generator::new(&mut session, &prompt, &options, || false).unwrap());
        assert_eq!(got.concat(), full[..at], "stop {stop:?}");
        assert_eq!(stats.stop_reason, StopReason::StopString);
        assert!(got.iter().all(|p| !p.contains(&stop)));
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} cases had a cross-token stop string"
    );
}

#[test]
fn cancel_is_asked_before_every_token_and_stops_within_one() {
    let engine = Engine::load(&nano(), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    let (prompt, _, _) = nano_cases().pop().unwrap();
    let asked = Cell::new(0);
    let cancel = || {
        asked.set(asked.get() + 1);
        asked.get() > 5
    };
    // The prefill asks once per batch (one batch here), then once per token.
    let g = Generator::new(&mut session, &prompt, &greedy(100, &[]), cancel).unwrap();
    let (_, stats) = pieces(g);
    assert_eq!(stats.stop_reason, StopReason::Cancelled);
    assert_eq!(stats.generated_tokens, 4);
    // Cancelled during the prefill: nothing is generated.
    let g = Generator::new(&mut session, &[1, 2, 3], &greedy(100, &[]), || true).unwrap();
    let (got, stats) = pieces(g);
    assert!(got.is_empty());
    assert_eq!(
        (stats.generated_tokens, stats.stop_reason),
        (0, StopReason::Cancelled)
    );
}

#[test]
fn a_full_context_is_its_own_stop_reason() {
    let settings = EngineSettings {
        ctx_size: Some(32),
        ..Default::default()
    };
    let engine = Engine::load(&nano(), settings).unwrap();
    let mut session = engine.session().unwrap();
    let prompt = engine.tokenize("import os\n\ndef main():\n", true);
    let g = Generator::new(&mut session, &prompt, &greedy(1000, &[]), || false).unwrap();
    let (_, stats) = pieces(g);
    assert_eq!(stats.stop_reason, StopReason::ContextFull);
    // llama.cpp pads the context (to 256 here); generation fills exactly what it has.
    assert_eq!(session.cached_tokens().len(), session.n_ctx() as usize);
}

/// Logits of `tokens` evaluated one at a time in a fresh session.
fn one_at_a_time(engine: &Engine, tokens: &[i32]) -> Vec<Vec<f32>> {
    let mut s = engine.session().unwrap();
    let mut rows = Vec::new();
    for &t in tokens {
        s.eval(&[t], |_| true, |_, row| rows.push(row.to_vec()), &|| false)
            .unwrap();
    }
    rows
}

/// Batched and single-token evaluation take different kernels, so rows agree to rounding:
/// the largest difference relative to the row's largest logit.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn logits_at_several_batch_positions_match_sequential_evaluation() {
    let engine = Engine::load(&lite_f32(), EngineSettings::default()).unwrap();
    let tokens = engine.tokenize("def add(a, b):\n    return a + b\n", true);
    let want = one_at_a_time(&engine, &tokens);
    let mut s = engine.session().unwrap();
    s.decode_all(&tokens).unwrap();
    let mut greedy = Sampler::new(&SamplingSettings::greedy(), engine.n_vocab(), &[]);
    for (i, w) in want.iter().enumerate() {
        let row = s.logits_at(i).expect("a row per position");
        assert!(
            max_diff(row, w) < 1e-3,
            "position {i}: {}",
            max_diff(row, w)
        );
        // Sampling at a batch index reads that row.
        let argmax = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        assert_eq!(greedy.sample(&s, Some(i)), argmax as i32, "position {i}");
    }
    assert!(s.logits_at(tokens.len()).is_none());
}

#[test]
fn truncating_to_a_prefix_equals_never_having_evaluated_the_rest() {
    let engine = Engine::load(&lite_f32(), EngineSettings::default()).unwrap();
    let prefix = engine.tokenize("def add(a, b):\n", true);
    let rejected = engine.tokenize("    pass  # a rejected draft", false);
    let accepted = engine.tokenize("    return a + b", false);
    let mut s = engine.session().unwrap();
    s.eval(&prefix, |_| false, |_, _| {}, &|| false).unwrap();
    s.decode_all(&rejected).unwrap();
    s.truncate(prefix.len()).unwrap();
    assert_eq!(s.cached_tokens(), &prefix[..]);
    s.decode_all(&accepted).unwrap();
    let all: Vec<i32> = prefix.iter().chain(&accepted).copied().collect();
    let want = one_at_a_time(&engine, &all);
    for (i, w) in want[prefix.len()..].iter().enumerate() {
        let d = max_diff(s.logits_at(i).unwrap(), w);
        assert!(d < 1e-3, "position {}: {d}", prefix.len() + i);
    }
}

/// The reply is stored as the model generated it, so the next turn's prompt starts with every
/// cached token: only the end-of-sequence marker, the template's glue and the new message are
/// evaluated.
#[test]
fn a_second_chat_turn_evaluates_only_the_new_message() {
    use dscoder::chat::{self, Conversation};
    let engine = Engine::load(&nano(), EngineSettings::default()).unwrap();
    let mut session = engine.session().unwrap();
    let mut c = Conversation::default();
    c.push_user("Write a function that returns the factorial of n.");
    let options = greedy(128, &[]);
    let first = chat::reply(
        &mut session,
        &c.template_messages(),
        &options,
        || false,
        |_| true,
    )
    .unwrap();
    assert_eq!(first.stats.stop_reason, StopReason::EndOfGeneration);
    assert!(!first.reply.starts_with(' '), "{:?}", first.reply);
    let cached = session.cached_tokens().len();
    assert_eq!(
        cached,
        first.stats.prompt_tokens + first.stats.generated_tokens
    );
    c.push_assistant(first.reply, false);
    c.push_user("Now add a docstring.");
    let prompt = dscoder::prompt::chat_tokens(&engine, &c.template_messages()).unwrap();
    let second = chat::reply(
        &mut session,
        &c.template_messages(),
        &options,
        || false,
        |_| true,
    )
    .unwrap();
    assert_eq!(
        second.stats.reused_tokens, cached,
        "the whole first turn is reused"
    );
    // What is evaluated: EOS, the glue and the message; nothing of the reply.
    let new_message = engine.tokenize_text("Now add a docstring.").len();
    assert!(second.stats.evaluated_tokens() <= new_message + 12);
    assert_eq!(second.stats.prompt_tokens, prompt.len());
}

/// Text a user types is text: the end-of-sequence marker typed into a message does not become
/// the EOS token (which would end the turn in the model's eyes), while the template's own
/// markers stay control tokens.
#[test]
fn control_token_text_in_a_message_stays_text() {
    use dscoder::chat::{Message, Role};
    use dscoder::model::tokens::{BOS, EOS};
    let engine = Engine::load(&nano(), EngineSettings::default()).unwrap();
    let eos_id = engine.tokenize(EOS, false)[0];
    let bos_id = engine.bos().unwrap();
    let typed = format!("Explain {EOS} and {BOS} in this file.");
    let messages = [
        Message::new(Role::User, "hi"),
        Message::new(Role::Assistant, "Hello."),
        Message::new(Role::User, typed.clone()),
    ];
    let tokens = dscoder::prompt::chat_tokens(&engine, &messages).unwrap();
    // One EOS: the template's, after the assistant's reply. One BOS: the first token.
    assert_eq!(tokens.iter().filter(|&&t| t == eos_id).count(), 1);
    assert_eq!(tokens.iter().filter(|&&t| t == bos_id).count(), 1);
    assert_eq!(tokens[0], bos_id);
    // And the typed text is all there, as text.
    let text = engine.detokenize(&tokens);
    assert!(text.contains(&typed), "{text:?}");
    // Without control text the tokens are exactly the whole rendering's.
    let plain = [Message::new(Role::User, "Reverse a string in Python.")];
    let rendered = dscoder::prompt::render_chat(&engine, &plain).unwrap();
    assert_eq!(
        dscoder::prompt::chat_tokens(&engine, &plain).unwrap(),
        engine.tokenize(&rendered, true)
    );
}

/// The cancel check is asked while the weights load, so Ctrl-C stops a long load at once.
#[test]
fn a_load_stops_when_the_cancel_check_says_so() {
    let settings = EngineSettings {
        cancel: Some(|| true),
        ..Default::default()
    };
    let err = match Engine::load(&nano(), settings) {
        Err(e) => e,
        Ok(_) => panic!("the load went on"),
    };
    assert!(dscoder::error::is_interrupted(&err), "{err}");
    let settings = EngineSettings {
        cancel: Some(|| false),
        ..Default::default()
    };
    assert!(Engine::load(&nano(), settings).is_ok());
}
