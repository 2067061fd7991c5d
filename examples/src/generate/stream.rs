//! Streamed generation: an answer as the chunks a user sees appear ([`AnswerChunk`]).
//!
//! * [`LocalGenerator`] composes its answer at once, then lets its words out one by one over its simulated
//!   latency, as a model's tokens would arrive.
//! * [`OpenAiCompatibleGenerator`] asks the endpoint for a streamed completion (`"stream": true`, with
//!   `"stream_options": {"include_usage": true}` so that the last event carries the tokens used) and reads
//!   its server-sent events as they come.
//!
//! A stream ends with one [`AnswerChunk::End`] (model, sources, usage) after its text chunks; a stream that
//! fails yields one `Err` and ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};

use super::{
    text, Answer, GenerateError, LocalGenerator, OpenAiCompatibleGenerator, TokenUsage, MAX_CONTEXT_DOCUMENTS,
};
use crate::retrieval::Document;

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnswerChunk {
    /// Text, in the order generated (a word and its leading space, or what an endpoint's event held).
    Text {
        /// The text to append.
        text: String,
    },
    /// The last chunk: what produced the answer and what it cost.
    End {
        /// Model that produced the text.
        model: String,
        /// Ids of the documents the answer cites (all of the context when it cites none).
        sources: Vec<String>,
        /// True for the local stand-in.
        generated_by_stand_in: bool,
        /// Tokens used, when known.
        usage: Option<TokenUsage>,
    },
}

impl AnswerChunk {
    /// The chunks of a whole answer: its words, then its end.
    pub fn split(answer: &Answer) -> Vec<AnswerChunk> {
        let mut chunks: Vec<AnswerChunk> = words(&answer.text).map(|text| AnswerChunk::Text { text }).collect();
        chunks.push(AnswerChunk::End {
            model: answer.model.clone(),
            sources: answer.sources.clone(),
            generated_by_stand_in: answer.generated_by_stand_in,
            usage: answer.usage,
        });
        chunks
    }

    /// The answer these chunks make up (`question` as asked, `generation_ms` as measured by the caller), or
    /// `None` when they lack their end.
    pub fn assemble(question: &str, chunks: &[AnswerChunk], generation_ms: u64) -> Option<Answer> {
        let mut text = String::new();
        for chunk in chunks {
            match chunk {
                AnswerChunk::Text { text: piece } => text.push_str(piece),
                AnswerChunk::End { model, sources, generated_by_stand_in, usage } => {
                    return Some(Answer {
                        question: question.trim().to_string(),
                        text: text.trim().to_string(),
                        model: model.clone(),
                        sources: sources.clone(),
                        generated_by_stand_in: *generated_by_stand_in,
                        generation_ms,
                        usage: *usage,
                    });
                }
            }
        }
        None
    }
}

/// `text` as words, each but the first with the space before it (concatenated, they give `text` back).
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let body = rest.trim_start();
        let end = body.find(char::is_whitespace).map_or(rest.len(), |i| rest.len() - body.len() + i);
        let (word, after) = rest.split_at(end);
        rest = after;
        Some(word.to_string())
    })
}

impl LocalGenerator {
    /// The answer of [`generate`](super::AnswerGenerator::generate), word by word: the simulated latency is
    /// spread over the words, so that the first appears after a fraction of it and the last at its end.
    pub fn stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>> {
        let answer = match self.compose(question, context) {
            Ok(answer) => answer,
            Err(error) => return stream::once(async move { Err(error) }).boxed(),
        };
        let chunks = AnswerChunk::split(&answer);
        let texts = chunks.len().saturating_sub(1).max(1) as u32;
        let gap = Duration::from_millis(answer.generation_ms) / texts;
        stream::iter(chunks)
            .then(move |chunk| async move {
                if matches!(chunk, AnswerChunk::Text { .. }) && !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                Ok(chunk)
            })
            .boxed()
    }
}

impl OpenAiCompatibleGenerator {
    /// A streamed chat completion: the request of `generate` with `"stream": true`, read event by event.
    pub fn stream(
        &self,
        question: &str,
        context: &[Document],
    ) -> BoxStream<'static, Result<AnswerChunk, GenerateError>> {
        let question = question.trim().to_string();
        if question.is_empty() {
            return stream::once(async { Err(GenerateError::EmptyQuestion) }).boxed();
        }
        let context: Vec<Document> = context.iter().take(MAX_CONTEXT_DOCUMENTS).cloned().collect();
        let mut body = match serde_json::to_value(self.request_body(&question, &context)) {
            Ok(body) => body,
            Err(e) => return stream::once(async move { Err(GenerateError::Config(e.to_string())) }).boxed(),
        };
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({ "include_usage": true });
        let mut request = self.client.post(self.endpoint.clone()).json(&body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let state = Events {
            request: Some(request),
            response: None,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            content: String::new(),
            context,
            model: self.config.model.clone(),
            usage: None,
            timeout: self.config.timeout,
            started: Instant::now(),
            done: false,
        };
        stream::unfold(state, |mut state| async move {
            let next = state.next().await?;
            Some((next, state))
        })
        .boxed()
    }
}

/// The state of one streamed completion: the request until sent, then the response and what its events
/// said so far.
struct Events {
    request: Option<reqwest::RequestBuilder>,
    response: Option<reqwest::Response>,
    /// Bytes received that do not make a whole line yet.
    buffer: Vec<u8>,
    /// Chunks parsed and not yet handed out.
    ready: VecDeque<AnswerChunk>,
    /// The text so far, to find the sources it cites.
    content: String,
    context: Vec<Document>,
    model: String,
    usage: Option<TokenUsage>,
    timeout: Duration,
    started: Instant,
    done: bool,
}

impl Events {
    /// The next chunk; `None` after the end or after an error.
    async fn next(&mut self) -> Option<Result<AnswerChunk, GenerateError>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            if self.done {
                return None;
            }
            match self.receive().await {
                Ok(()) => {}
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// Sends the request if not yet sent, then reads one piece of the response and parses its whole lines.
    async fn receive(&mut self) -> Result<(), GenerateError> {
        let timeout = self.timeout;
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                GenerateError::Timeout(timeout)
            } else {
                GenerateError::Transport(e)
            }
        };
        if let Some(request) = self.request.take() {
            let response = request.send().await.map_err(map_err)?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.map_err(map_err)?;
                return Err(GenerateError::Status {
                    status: status.as_u16(),
                    body: text::truncate_chars(body.trim(), 500),
                });
            }
            self.response = Some(response);
        }
        let Some(response) = self.response.as_mut() else {
            return Err(GenerateError::InvalidResponse("no response".into()));
        };
        match response.chunk().await.map_err(map_err)? {
            Some(bytes) => self.buffer.extend_from_slice(&bytes),
            // The connection closed: whatever is left is the last line.
            None => {
                self.buffer.push(b'\n');
                self.parse_lines()?;
                if !self.done {
                    return Err(GenerateError::InvalidResponse("the stream ended before `data: [DONE]`".into()));
                }
                return Ok(());
            }
        }
        self.parse_lines()
    }

    /// Parses every whole line of the buffer: `data:` lines are events, the rest (comments, blank lines,
    /// other fields) is skipped.
    fn parse_lines(&mut self) -> Result<(), GenerateError> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8(line)
                .map_err(|_| GenerateError::InvalidResponse("a server-sent event that is not UTF-8".into()))?;
            let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
            self.event(data.trim())?;
            if self.done {
                self.buffer.clear();
                break;
            }
        }
        Ok(())
    }

    /// One event's data: a completion chunk, or `[DONE]`.
    fn event(&mut self, data: &str) -> Result<(), GenerateError> {
        if data == "[DONE]" {
            let cited: Vec<String> = self
                .context
                .iter()
                .filter(|d| self.content.contains(&format!("[{}]", d.id)))
                .map(|d| d.id.clone())
                .collect();
            let sources = if cited.is_empty() { self.context.iter().map(|d| d.id.clone()).collect() } else { cited };
            tracing::debug!(model = %self.model, ms = self.started.elapsed().as_millis() as u64, "LLM stream ended");
            self.ready.push_back(AnswerChunk::End {
                model: std::mem::take(&mut self.model),
                sources,
                generated_by_stand_in: false,
                usage: self.usage,
            });
            self.done = true;
            return Ok(());
        }
        let parsed: StreamEvent = serde_json::from_str(data)
            .map_err(|e| GenerateError::InvalidResponse(format!("not a chat completion chunk: {e}")))?;
        if let Some(usage) = TokenUsage::from_response_json(data) {
            self.usage = Some(usage);
        }
        if let Some(model) = parsed.model.filter(|m| !m.is_empty()) {
            self.model = model;
        }
        let content: String = parsed.choices.into_iter().filter_map(|c| c.delta.content).collect();
        if !content.is_empty() {
            self.content.push_str(&content);
            self.ready.push_back(AnswerChunk::Text { text: content });
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<StreamChoice>,
}

#[derive(Debug, Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: StreamDelta,
}

#[derive(Debug, Default, Deserialize)]
struct StreamDelta {
    #[serde(default)]
    content: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::tests::{client, context_for, one_shot_server};
    use super::*;

    #[test]
    fn words_keep_their_spaces_and_give_the_text_back() {
        let text = "  VACUUM  marks dead\ttuples [pg-002].";
        let parts: Vec<String> = words(text).collect();
        assert_eq!(parts.concat(), text);
        assert_eq!(parts.len(), 5);
        assert_eq!(words("").count(), 0);
    }

    #[test]
    fn an_answer_split_and_assembled_is_the_same_answer() {
        let engine = LocalGenerator::new().without_latency();
        let question = "How does VACUUM reclaim space?";
        let answer = engine.compose(question, &context_for(question)).unwrap();
        let chunks = AnswerChunk::split(&answer);
        assert!(matches!(chunks.last(), Some(AnswerChunk::End { .. })));
        let again = AnswerChunk::assemble(question, &chunks, answer.generation_ms).unwrap();
        assert_eq!(again, answer);
        assert_eq!(AnswerChunk::assemble(question, &chunks[..chunks.len() - 1], 0), None, "no end, no answer");
    }

    #[tokio::test]
    async fn the_stand_in_streams_the_answer_it_would_return() {
        let engine = LocalGenerator::new().without_latency();
        let question = "What does an index on a foreign key help with?";
        let context = context_for(question);
        let chunks: Vec<AnswerChunk> = engine.stream(question, &context).map(Result::unwrap).collect().await;
        assert!(chunks.len() > 2, "{chunks:?}");
        let streamed = AnswerChunk::assemble(question, &chunks, 0).unwrap();
        let whole = engine.compose(question, &context).unwrap();
        assert_eq!(streamed, Answer { generation_ms: 0, ..whole });
        let failed: Vec<_> = engine.stream("  ", &context).collect().await;
        assert!(matches!(failed.as_slice(), [Err(GenerateError::EmptyQuestion)]));
    }

    #[tokio::test]
    async fn the_client_reads_a_streamed_completion_and_its_usage() {
        let events = [
            r#"{"model":"m-1","choices":[{"delta":{"role":"assistant"}}],"usage":null}"#,
            r#"{"model":"m-1","choices":[{"delta":{"content":"VACUUM marks"}}],"usage":null}"#,
            r#"{"model":"m-1","choices":[{"delta":{"content":" dead tuples [pg-002]."}}],"usage":null}"#,
            r#"{"model":"m-1","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":9}}"#,
            "[DONE]",
        ];
        let body: String = events.iter().map(|e| format!(": keep-alive\ndata: {e}\n\n")).collect();
        let (base, server) = one_shot_server(Some("200 OK"), body).await;
        let question = "How does VACUUM reclaim space?";
        let chunks: Vec<AnswerChunk> = client(&base, Duration::from_secs(5))
            .stream(question, &context_for(question))
            .map(Result::unwrap)
            .collect()
            .await;
        let answer = AnswerChunk::assemble(question, &chunks, 0).unwrap();
        assert_eq!(answer.text, "VACUUM marks dead tuples [pg-002].");
        assert_eq!((answer.model.as_str(), answer.sources.as_slice()), ("m-1", ["pg-002".to_string()].as_slice()));
        assert_eq!(answer.usage, Some(TokenUsage { input_tokens: 120, output_tokens: 9, estimated: false }));
        let request = server.await.unwrap();
        let sent: serde_json::Value = serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            (sent["stream"].clone(), sent["stream_options"]["include_usage"].clone()),
            (true.into(), true.into())
        );
    }

    #[tokio::test]
    async fn a_stream_cut_before_its_end_or_garbled_is_an_error() {
        let question = "How does VACUUM reclaim space?";
        for (body, expected) in [
            ("data: {\"choices\":[{\"delta\":{\"content\":\"half\"}}]}\n\n", "before `data: [DONE]`"),
            ("data: {not json\n\n", "not a chat completion chunk"),
        ] {
            let (base, server) = one_shot_server(Some("200 OK"), body.to_string()).await;
            let items: Vec<_> =
                client(&base, Duration::from_secs(5)).stream(question, &context_for(question)).collect().await;
            let last = items.last().unwrap();
            assert!(matches!(last, Err(GenerateError::InvalidResponse(m)) if m.contains(expected)), "{items:?}");
            server.await.unwrap();
        }
        let (base, server) = one_shot_server(Some("503 Service Unavailable"), "busy".into()).await;
        let items: Vec<_> =
            client(&base, Duration::from_secs(5)).stream(question, &context_for(question)).collect().await;
        assert!(matches!(items.as_slice(), [Err(GenerateError::Status { status: 503, .. })]), "{items:?}");
        server.await.unwrap();
    }
}
