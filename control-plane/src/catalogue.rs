//! The model catalogue, providers and plan table, loaded from TOML (the integration guide's
//! values are the built-in default) and compiled into a validated runtime object.

use opsgate_core::plan::{Plan, PowerLevel, TaskType};
use opsgate_core::pricing::Price;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const DEFAULT_CATALOGUE: &str = include_str!("../config/catalogue.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    providers: BTreeMap<String, RawProvider>,
    models: Vec<RawModel>,
    plans: BTreeMap<String, RawPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    cluster: String,
    authority: String,
    base_path: String,
    #[serde(default)]
    key_env: Option<String>,
    #[serde(default)]
    local: bool,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Chat,
    Image,
    /// Embeddings: priced by input tokens only (`input_per_million`).
    Embedding,
}

impl ModelKind {
    /// The name `/models` and the snapshot give the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Image => "image",
            ModelKind::Embedding => "embedding",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: String,
    provider: String,
    provider_model: String,
    tier: String,
    #[serde(default = "chat_kind")]
    kind: ModelKind,
    #[serde(default)]
    input_per_million: i64,
    #[serde(default)]
    output_per_million: i64,
    #[serde(default)]
    per_image: i64,
    #[serde(default = "default_max_output")]
    max_output_tokens: u64,
    /// The most tokens one image part in a prompt can cost (vision models).
    #[serde(default = "default_image_input_tokens")]
    image_input_tokens: u64,
    /// `max_completion_tokens` for models that refuse `max_tokens` (OpenAI's o-series).
    #[serde(default)]
    completion_limit: opsgate_core::contract::CompletionLimit,
    /// Whether the model takes `temperature` (reasoning models do not): the guide's default
    /// is sent when the client sets none.
    #[serde(default = "takes_temperature")]
    temperature: bool,
    #[serde(default = "default_quality")]
    quality: u32,
    #[serde(default)]
    tasks: Vec<TaskType>,
    /// The model's id on OpenRouter, for callers whose own OpenRouter key serves it.
    #[serde(default)]
    openrouter_model: Option<String>,
    /// Embedding models: the vector size when a request sets no `dimensions` (the filter
    /// refuses a batch whose answer could not pass Envoy's buffer).
    #[serde(default)]
    dimensions: Option<u64>,
}

fn chat_kind() -> ModelKind {
    ModelKind::Chat
}
/// The default bound for one image part in a prompt: a high-detail image on OpenAI's
/// GPT-4o family costs at most ~1,105 tokens; this leaves headroom. Models priced otherwise
/// (gpt-4o-mini bills images at many times the tokens) set their own.
pub const DEFAULT_IMAGE_INPUT_TOKENS: u64 = 1_500;
/// The largest per-image bound the catalogue accepts.
pub const MAX_IMAGE_INPUT_TOKENS: u64 = 1_000_000;

fn default_image_input_tokens() -> u64 {
    DEFAULT_IMAGE_INPUT_TOKENS
}

fn default_max_output() -> u64 {
    16_384
}
fn takes_temperature() -> bool {
    true
}

fn default_quality() -> u32 {
    5
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    #[default]
    Month,
    Trial,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    daily_calls: Option<u64>,
    #[serde(default)]
    period_calls: Option<u64>,
    #[serde(default)]
    period: PeriodKind,
    #[serde(default)]
    markup_percent: i64,
    tiers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub cluster: String,
    pub authority: String,
    pub base_path: String,
    pub key_env: Option<String>,
    pub local: bool,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub provider: String,
    pub provider_model: String,
    pub tier: String,
    pub kind: ModelKind,
    pub price: Price,
    pub max_output_tokens: u64,
    /// The hold's bound for one image part in a prompt, in prompt tokens.
    pub image_input_tokens: u64,
    pub completion_limit: opsgate_core::contract::CompletionLimit,
    pub temperature: bool,
    pub quality: u32,
    pub tasks: Vec<TaskType>,
    pub local: bool,
    /// Explicit OpenRouter id (see [`Catalogue::openrouter_model`]).
    pub openrouter_model: Option<String>,
    /// Embedding models: the default vector size.
    pub dimensions: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PlanLimits {
    pub daily_calls: Option<u64>,
    pub period_calls: Option<u64>,
    pub period: PeriodKind,
    pub markup_percent: i64,
    pub tiers: Vec<String>,
}

/// The validated catalogue.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub providers: BTreeMap<String, Provider>,
    pub models: Vec<Model>,
    pub plans: BTreeMap<Plan, PlanLimits>,
}

impl Catalogue {
    /// Parses and validates; errors name the source and the offending field.
    pub fn from_toml(source: &str, text: &str) -> Result<Catalogue, String> {
        let raw: RawCatalogue = toml::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        let mut providers = BTreeMap::new();
        for (name, p) in raw.providers {
            if p.cluster.trim().is_empty() {
                return Err(format!(
                    "{source}: providers.{name}.cluster must not be empty"
                ));
            }
            if !p.base_path.starts_with('/') {
                return Err(format!(
                    "{source}: providers.{name}.base_path must start with '/'"
                ));
            }
            providers.insert(
                name.clone(),
                Provider {
                    name,
                    cluster: p.cluster,
                    authority: p.authority,
                    base_path: p.base_path.trim_end_matches('/').to_string(),
                    key_env: p.key_env,
                    local: p.local,
                },
            );
        }
        let mut tiers_seen = std::collections::BTreeSet::new();
        let mut models: Vec<Model> = Vec::new();
        for (i, m) in raw.models.into_iter().enumerate() {
            let at = format!("{source}: models[{i}] ({})", m.id);
            if m.id.trim().is_empty() {
                return Err(format!("{source}: models[{i}].id must not be empty"));
            }
            if models.iter().any(|x| x.id == m.id) {
                return Err(format!("{at}.id is defined twice"));
            }
            let Some(provider) = providers.get(&m.provider) else {
                return Err(format!(
                    "{at}.provider '{}' is not a configured provider",
                    m.provider
                ));
            };
            for (field, v) in [
                ("input_per_million", m.input_per_million),
                ("output_per_million", m.output_per_million),
                ("per_image", m.per_image),
            ] {
                if v < 0 {
                    return Err(format!("{at}.{field} must not be negative"));
                }
                if v > opsgate_core::pricing::MAX_PRICE_MC {
                    return Err(format!(
                        "{at}.{field} must be at most {} milli-credits",
                        opsgate_core::pricing::MAX_PRICE_MC
                    ));
                }
            }
            if m.max_output_tokens == 0 {
                return Err(format!("{at}.max_output_tokens must be positive"));
            }
            if m.image_input_tokens > MAX_IMAGE_INPUT_TOKENS {
                return Err(format!(
                    "{at}.image_input_tokens must be at most {MAX_IMAGE_INPUT_TOKENS}"
                ));
            }
            if let Some(d) = m.dimensions {
                let max = opsgate_core::request::MAX_EMBEDDING_DIMENSIONS;
                if m.kind != ModelKind::Embedding {
                    return Err(format!("{at}.dimensions: only embedding models have one"));
                }
                if d == 0 || d > max {
                    return Err(format!("{at}.dimensions must be from 1 to {max}"));
                }
            }
            if let Some(o) = &m.openrouter_model {
                if o.is_empty() || o.len() > 128 || !o.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "{at}.openrouter_model must be a non-empty id without spaces"
                    ));
                }
                if provider.local || m.kind != ModelKind::Chat {
                    return Err(format!(
                        "{at}.openrouter_model: local, image and embedding models are not served through OpenRouter"
                    ));
                }
            }
            tiers_seen.insert(m.tier.clone());
            models.push(Model {
                local: provider.local,
                id: m.id,
                provider: m.provider,
                provider_model: m.provider_model,
                tier: m.tier,
                kind: m.kind,
                price: Price {
                    input_per_million: m.input_per_million,
                    output_per_million: m.output_per_million,
                    per_image: m.per_image,
                },
                max_output_tokens: m.max_output_tokens,
                image_input_tokens: m.image_input_tokens,
                completion_limit: m.completion_limit,
                // Only chat takes `temperature`: the guide's default is never sent to an image
                // or embeddings API (which would refuse an argument it does not know).
                temperature: m.temperature && m.kind == ModelKind::Chat,
                quality: m.quality,
                tasks: m.tasks,
                openrouter_model: m.openrouter_model,
                dimensions: m.dimensions,
            });
        }
        let mut plans = BTreeMap::new();
        for (name, p) in raw.plans {
            let Some(plan) = Plan::parse(&name) else {
                return Err(format!(
                    "{source}: plans.{name} is not a plan (expected trial, starter, professional, enterprise, vip_founder or byok)"
                ));
            };
            if !(0..=opsgate_core::pricing::MAX_MARKUP_PERCENT).contains(&p.markup_percent) {
                return Err(format!(
                    "{source}: plans.{name}.markup_percent must be from 0 to {}",
                    opsgate_core::pricing::MAX_MARKUP_PERCENT
                ));
            }
            for t in &p.tiers {
                if !tiers_seen.contains(t) {
                    return Err(format!(
                        "{source}: plans.{name}.tiers names '{t}', which no model has"
                    ));
                }
            }
            plans.insert(
                plan,
                PlanLimits {
                    daily_calls: p.daily_calls,
                    period_calls: p.period_calls,
                    period: p.period,
                    markup_percent: p.markup_percent,
                    tiers: p.tiers,
                },
            );
        }
        for plan in Plan::ALL {
            if !plans.contains_key(&plan) {
                return Err(format!("{source}: plans.{} is missing", plan.as_str()));
            }
        }
        Ok(Catalogue {
            providers,
            models,
            plans,
        })
    }

    pub fn builtin() -> Catalogue {
        match Catalogue::from_toml("built-in catalogue", DEFAULT_CATALOGUE) {
            Ok(c) => c,
            Err(e) => unreachable!("the built-in catalogue is tested: {e}"),
        }
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn plan(&self, plan: Plan) -> &PlanLimits {
        match self.plans.get(&plan) {
            Some(p) => p,
            None => unreachable!("every plan is checked present at load"),
        }
    }

    pub fn allows(&self, plan: Plan, model: &Model) -> bool {
        self.plan(plan).tiers.contains(&model.tier)
    }

    /// The models a plan may use, in catalogue order.
    pub fn allowed(&self, plan: Plan) -> impl Iterator<Item = &Model> {
        self.models.iter().filter(move |m| self.allows(plan, m))
    }

    /// Picks a model for a request that left the choice to the gateway: among the allowed
    /// models of the right kind (local only when privacy is required), prefer those suited
    /// to the task, then by power level — eco the cheapest, precision the best, balanced
    /// the best of those at or below the median price.
    pub fn choose(
        &self,
        plan: Plan,
        kind: ModelKind,
        power: PowerLevel,
        task: TaskType,
        privacy: bool,
    ) -> Option<&Model> {
        self.choose_where(kind, power, task, privacy, |m| self.allows(plan, m))
    }

    /// [`Catalogue::choose`] among the models `usable` accepts (a plan's tiers, plus what
    /// the caller's own provider keys reach).
    pub fn choose_where(
        &self,
        kind: ModelKind,
        power: PowerLevel,
        task: TaskType,
        privacy: bool,
        usable: impl Fn(&Model) -> bool,
    ) -> Option<&Model> {
        let candidates: Vec<&Model> = self
            .models
            .iter()
            .filter(|m| usable(m) && m.kind == kind && (!privacy || m.local))
            .collect();
        let suited: Vec<&Model> = candidates
            .iter()
            .copied()
            .filter(|m| m.tasks.contains(&task))
            .collect();
        let pool = if suited.is_empty() {
            candidates
        } else {
            suited
        };
        let price =
            |m: &Model| m.price.input_per_million + m.price.output_per_million + m.price.per_image;
        match power {
            PowerLevel::Eco => pool
                .into_iter()
                .min_by_key(|m| (price(m), std::cmp::Reverse(m.quality))),
            PowerLevel::Precision => pool
                .into_iter()
                .max_by_key(|m| (m.quality, std::cmp::Reverse(price(m)))),
            PowerLevel::Balanced => {
                let mut prices: Vec<i64> = pool.iter().map(|m| price(m)).collect();
                prices.sort_unstable();
                let median = *prices.get(prices.len().saturating_sub(1) / 2)?;
                pool.into_iter()
                    .filter(|m| price(m) <= median)
                    .max_by_key(|m| (m.quality, std::cmp::Reverse(price(m))))
            }
        }
    }

    /// Providers a caller may store a key for: every provider that is not local (a local
    /// provider needs no key).
    pub fn keyed_provider(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name).filter(|p| !p.local)
    }

    /// The model id OpenRouter serves `m` under, or `None` when OpenRouter cannot serve it.
    ///
    /// The rule: local and image models never go through OpenRouter; a model the catalogue
    /// already routes to OpenRouter keeps its `provider_model`; otherwise the model's
    /// `openrouter_model` when the catalogue sets one (the built-in catalogue does for every
    /// cloud chat model); otherwise `<provider>/<provider_model>` (e.g. `openai/gpt-4o`),
    /// or `provider_model` alone when it already has a `vendor/` prefix.
    pub fn openrouter_model(&self, m: &Model) -> Option<String> {
        if m.local || m.kind != ModelKind::Chat || !self.providers.contains_key(OPENROUTER) {
            return None;
        }
        if m.provider == OPENROUTER {
            return Some(m.provider_model.clone());
        }
        if let Some(o) = &m.openrouter_model {
            return Some(o.clone());
        }
        Some(if m.provider_model.contains('/') {
            m.provider_model.clone()
        } else {
            format!("{}/{}", m.provider, m.provider_model)
        })
    }

    /// How a caller holding keys for the providers `has_key` accepts reaches `m` with its own
    /// keys, best first: the model's own provider, then OpenRouter. Each route is the
    /// serving provider and the model id to send it. Empty when no own key serves `m`.
    pub fn byok_routes(
        &self,
        m: &Model,
        has_key: impl Fn(&str) -> bool,
    ) -> Vec<(&Provider, String)> {
        let mut out = Vec::new();
        if let Some(p) = self.keyed_provider(&m.provider) {
            if has_key(&p.name) {
                out.push((p, m.provider_model.clone()));
            }
        }
        if m.provider != OPENROUTER && has_key(OPENROUTER) {
            if let (Some(p), Some(id)) = (self.providers.get(OPENROUTER), self.openrouter_model(m))
            {
                out.push((p, id));
            }
        }
        out
    }
}

/// The provider whose key reaches any model (the integration guide's "ALL models").
pub const OPENROUTER: &str = "openrouter";

/// Is `id` shaped like an OpenRouter model id (`vendor/model`, optionally `:variant`)? A
/// caller with an OpenRouter key may name any such model, in the catalogue or not.
pub fn is_openrouter_model_id(id: &str) -> bool {
    let Some((vendor, model)) = id.split_once('/') else {
        return false;
    };
    id.len() <= 128
        && !vendor.is_empty()
        && !model.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_guides_tiers() {
        let c = Catalogue::builtin();
        assert_eq!(c.plan(Plan::Professional).period_calls, Some(10_000));
        assert_eq!(c.plan(Plan::Starter).daily_calls, Some(34));
        assert_eq!(c.plan(Plan::Trial).period, PeriodKind::Trial);
        assert_eq!(c.plan(Plan::Enterprise).period_calls, None);
        let mini = c.model("gpt-4o-mini").unwrap();
        assert!(c.allows(Plan::Professional, mini));
        assert!(!c.allows(Plan::Starter, mini));
        assert!(c.allows(Plan::Enterprise, c.model("o1-preview").unwrap()));
        assert!(!c.allows(Plan::Professional, c.model("o1-preview").unwrap()));
        assert_eq!(c.allowed(Plan::Trial).count(), 6);
    }

    #[test]
    fn embedding_models_are_priced_by_input_and_open_to_every_plan() {
        let c = Catalogue::builtin();
        // OpenAI's list prices, converted as every price is: $0.02 and $0.13 per 1M tokens
        // are 20 and 130 credits, 20,000 and 130,000 milli-credits.
        for (id, input) in [
            ("text-embedding-3-small", 20_000),
            ("text-embedding-3-large", 130_000),
        ] {
            let m = c.model(id).unwrap();
            assert_eq!(m.kind, ModelKind::Embedding, "{id}");
            assert_eq!(m.provider, "openai", "{id}");
            assert_eq!(m.provider_model, id);
            assert_eq!(
                m.price,
                Price {
                    input_per_million: input,
                    output_per_million: 0,
                    per_image: 0
                },
                "{id}"
            );
            assert!(!m.temperature, "{id} takes no temperature");
            assert_eq!(c.openrouter_model(m), None, "{id}");
            for plan in Plan::ALL {
                assert!(c.allows(plan, m), "{id} on {}", plan.as_str());
            }
        }
        // Only chat models take the guide's default temperature.
        assert!(!c.model("dall-e-3").unwrap().temperature);
        assert!(c.model("gpt-4o-mini").unwrap().temperature);
        // Auto-selection keeps kinds apart: an embedding model never serves a chat.
        let eco = c
            .choose(
                Plan::Trial,
                ModelKind::Embedding,
                PowerLevel::Eco,
                TaskType::Chat,
                false,
            )
            .unwrap();
        assert_eq!(eco.id, "text-embedding-3-small");
        let precise = c
            .choose(
                Plan::Trial,
                ModelKind::Embedding,
                PowerLevel::Precision,
                TaskType::Chat,
                false,
            )
            .unwrap();
        assert_eq!(precise.id, "text-embedding-3-large");
        for power in [PowerLevel::Eco, PowerLevel::Balanced, PowerLevel::Precision] {
            let chat = c
                .choose(Plan::Trial, ModelKind::Chat, power, TaskType::Chat, false)
                .unwrap();
            assert_eq!(chat.kind, ModelKind::Chat);
        }
        // An embedding model routed through OpenRouter is refused at load.
        let bad = DEFAULT_CATALOGUE.replacen(
            "provider_model = \"text-embedding-3-small\"",
            "provider_model = \"text-embedding-3-small\"\nopenrouter_model = \"openai/text-embedding-3-small\"",
            1,
        );
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(
            e.contains("text-embedding-3-small") && e.contains("openrouter_model"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let bad = DEFAULT_CATALOGUE.replacen("quality = 3", "qualty = 3", 1);
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(e.contains("x.toml") && e.contains("qualty"), "{e}");
        let bad = DEFAULT_CATALOGUE.replacen("provider = \"local\"", "provider = \"nowhere\"", 1);
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(e.contains("models[0]") && e.contains("nowhere"), "{e}");
        let bad = DEFAULT_CATALOGUE.replacen("[plans.byok]", "[plans.gold]", 1);
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(e.contains("plans.gold"), "{e}");
        let bad =
            DEFAULT_CATALOGUE.replacen("output_per_million = 600000", "output_per_million = -1", 1);
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(
            e.contains("gpt-4o-mini") && e.contains("output_per_million"),
            "{e}"
        );
        let bad = DEFAULT_CATALOGUE.replacen("dimensions = 3072", "dimensions = 0", 1);
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(e.contains("dimensions must be from 1"), "{e}");
        let bad = DEFAULT_CATALOGUE.replacen(
            "output_per_million = 600000",
            "output_per_million = 600000\ndimensions = 8",
            1,
        );
        let e = Catalogue::from_toml("x.toml", &bad).unwrap_err();
        assert!(e.contains("only embedding models"), "{e}");
    }

    #[test]
    fn auto_selection_follows_power_and_privacy() {
        let c = Catalogue::builtin();
        let eco = c
            .choose(
                Plan::Enterprise,
                ModelKind::Chat,
                PowerLevel::Eco,
                TaskType::Chat,
                false,
            )
            .unwrap();
        assert_eq!(
            eco.price.input_per_million, 0,
            "eco picks a free model: {}",
            eco.id
        );
        let best = c
            .choose(
                Plan::Enterprise,
                ModelKind::Chat,
                PowerLevel::Precision,
                TaskType::Code,
                false,
            )
            .unwrap();
        assert_eq!(best.id, "o1-preview");
        let private = c
            .choose(
                Plan::Enterprise,
                ModelKind::Chat,
                PowerLevel::Precision,
                TaskType::Chat,
                true,
            )
            .unwrap();
        assert!(private.local);
        let trial = c
            .choose(
                Plan::Trial,
                ModelKind::Chat,
                PowerLevel::Precision,
                TaskType::Chat,
                false,
            )
            .unwrap();
        assert_eq!(trial.tier, "free");
        assert!(c
            .choose(
                Plan::Trial,
                ModelKind::Image,
                PowerLevel::Balanced,
                TaskType::Chat,
                false
            )
            .is_none());
    }
}
