//! `dino chat`: an interactive chat in the terminal, through the model's chat template.
//!
//! Each line read from stdin becomes a user message; the whole conversation is rendered with
//! the template (`add_generation_prompt = true`), tokenized, and the reply is generated and
//! streamed to stdout, then kept as the assistant's message. Piped stdin works the same (one
//! message per line), which is how it is tested. `/reset` forgets the conversation, `/exit` or
//! end of input quits.
//!
//! The KV cache is kept between turns: what it holds (the previous prompt and reply tokens) is
//! compared with the new rendering, and only the tokens after the common prefix need to be
//! evaluated. Skipping them needs a `generate` that starts at a given position, which
//! dino-engine does not have yet: until then [`generate_cached`] evaluates the whole prompt.

use crate::{load_engine, ModelArgs, SamplingArgs};
use anyhow::{Context, Result};
use clap::Args;
use dino_engine::{Engine, GenerateParams, GenerateStats, KvCache};
use dino_tokenizer::chat::{ChatMessage, ChatTemplate};
use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;

#[derive(Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message starting the conversation (kept across /reset).
    #[arg(long = "system", value_name = "TEXT")]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// A conversation and what the KV cache holds of it.
struct Session<'e> {
    engine: &'e Engine,
    template: ChatTemplate,
    kv: KvCache,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    /// The tokens whose keys and values are in `kv`, at positions 0.. in order.
    cached: Vec<u32>,
    params: GenerateParams,
}

/// What one turn did.
struct Turn {
    prompt_tokens: usize,
    /// Prompt tokens taken from the KV cache instead of being evaluated again.
    reused: usize,
    stats: GenerateStats,
}

impl<'e> Session<'e> {
    fn reset(&mut self) {
        self.messages.clear();
        if let Some(s) = &self.system {
            self.messages.push(ChatMessage::new("system", s.clone()));
        }
        self.cached.clear();
    }

    /// The conversation rendered and tokenized: BOS is added when the vocabulary asks for it
    /// and the template did not write it; special tokens in the rendering are parsed.
    fn prompt_tokens(&self) -> Result<Vec<u32>> {
        let text = self.template.render(&self.messages, true)?;
        let tok = &self.engine.tokenizer;
        let mut ids = tok.encode(&text, false, true)?;
        if let (true, Some(bos)) = (tok.add_bos(), tok.bos()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Adds the user's message, generates the reply streaming it to `out`, and adds it to the
    /// conversation. On an error the user's message is taken back.
    fn turn(&mut self, user: &str, out: &mut impl Write) -> Result<Turn> {
        self.messages.push(ChatMessage::new("user", user));
        let r = self.reply(out);
        if r.is_err() {
            self.messages.pop();
        }
        r
    }

    fn reply(&mut self, out: &mut impl Write) -> Result<Turn> {
        let prompt = self.prompt_tokens()?;
        // Keep the cached tokens the new prompt starts with; at least its last token is
        // evaluated again, for the logits that start the reply.
        let n_cached = common_prefix(&self.cached, &prompt).min(prompt.len().saturating_sub(1));
        let mut reply = String::new();
        let mut write_err = None;
        let stats = generate_cached(
            self.engine,
            &mut self.kv,
            &prompt,
            n_cached,
            &self.params,
            |_, text| {
                reply.push_str(text);
                match write!(out, "{text}").and_then(|_| out.flush()) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        write_err = Some(e);
                        ControlFlow::Break(())
                    }
                }
            },
        );
        // Whatever happened, the cache now holds some unknown part of the prompt: forget it
        // unless generation succeeded.
        self.cached.clear();
        let (stats, reused) = stats?;
        if let Some(e) = write_err {
            return Err(e).context("writing the reply");
        }
        // The cache holds the prompt and every generated token but the last (which was
        // sampled, never evaluated).
        self.cached = prompt.clone();
        let n = stats.tokens.len().saturating_sub(1);
        self.cached.extend_from_slice(&stats.tokens[..n]);
        self.messages.push(ChatMessage::new("assistant", reply));
        Ok(Turn {
            prompt_tokens: prompt.len(),
            reused,
            stats,
        })
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// [`generate`] for a prompt whose first `n_cached` tokens are already in `kv` (positions
/// `0..n_cached`); returns the stats and how many prompt tokens were not evaluated again.
///
/// dino-engine's `generate` evaluates every prompt token from position 0, so for now the
/// cached prefix is evaluated again (same result, more time) and 0 is returned; with an engine
/// entry point that starts at `n_cached` (`generate_cached(engine, kv, prompt, n_cached,
/// params, on_token)`), this becomes that one call.
fn generate_cached(
    engine: &Engine,
    kv: &mut KvCache,
    prompt: &[u32],
    n_cached: usize,
    params: &GenerateParams,
    on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> dino_core::Result<(GenerateStats, usize)> {
    let n_cached = n_cached.min(prompt.len().saturating_sub(1));
    Ok((
        dino_engine::generate_cached(engine, kv, prompt, n_cached, params, on_token)?,
        n_cached,
    ))
}

pub(crate) fn cmd_chat(a: ChatArgs) -> Result<()> {
    let engine = load_engine(&a.model)?;
    let template = ChatTemplate::for_model(engine.file.metadata())?;
    if template.is_fallback() {
        eprintln!("note: the model has no chat template (tokenizer.chat_template); using ChatML");
    }
    let ctx = engine.choose_ctx(a.model.ctx_size)?;
    let kv = engine.new_kv(ctx.n_ctx)?;
    let params = GenerateParams {
        max_tokens: a.n_predict,
        sampler: a.sampling.config(),
        n_batch: 512,
        stop_at_eog: true,
    };
    let mut s = Session {
        engine: &engine,
        template,
        kv,
        system: a.system,
        messages: Vec::new(),
        cached: Vec::new(),
        params,
    };
    s.reset();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "chat with {} tokens of context; /reset forgets the conversation, /exit quits",
            ctx.n_ctx
        );
    }
    let mut stdout = std::io::stdout().lock();
    let mut lines = std::io::stdin().lock().lines();
    let mut n_turn = 0;
    loop {
        if interactive {
            write!(stdout, "> ")?;
            stdout.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let msg = line.trim_end_matches(['\r', '\n']);
        match msg.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                s.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        n_turn += 1;
        match s.turn(msg, &mut stdout) {
            Ok(t) => {
                writeln!(stdout)?;
                stdout.flush()?;
                let st = &t.stats;
                eprintln!(
                    "[turn {n_turn}: prompt {} tokens ({} reused from the cache), reply {} tokens{}, {:.1} tokens/s]",
                    t.prompt_tokens,
                    t.reused,
                    st.generated_tokens,
                    if st.stopped_at_eog { "" } else { " (cut at -n)" },
                    st.gen_tps(),
                );
            }
            // A turn that cannot be served (context full, template error) does not end the
            // chat: say why and keep the conversation as it was.
            Err(e) => {
                writeln!(stdout)?;
                eprintln!("error: {e:#}");
                if !interactive {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_shared_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[7], &[1]), 0);
    }
}
