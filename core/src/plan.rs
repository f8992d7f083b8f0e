//! Plans (the integration guide's tiers), power levels and task types.

use serde::{Deserialize, Serialize};

/// A user's subscription plan. Limits and prices per plan are configuration
/// (see the control plane's catalogue); the set of plans is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Trial,
    Starter,
    Professional,
    Enterprise,
    VipFounder,
    Byok,
}

impl Plan {
    pub const ALL: [Plan; 6] = [
        Plan::Trial,
        Plan::Starter,
        Plan::Professional,
        Plan::Enterprise,
        Plan::VipFounder,
        Plan::Byok,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Trial => "trial",
            Plan::Starter => "starter",
            Plan::Professional => "professional",
            Plan::Enterprise => "enterprise",
            Plan::VipFounder => "vip_founder",
            Plan::Byok => "byok",
        }
    }

    pub fn parse(s: &str) -> Option<Plan> {
        Plan::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// May a user on this plan belong to an organisation on `org`? An organisation's plan is
    /// its tier: the highest plan its users may have (trial < starter < professional <
    /// enterprise < vip_founder). A `byok` user pays the provider, not the platform, and fits
    /// any organisation; a `byok` organisation has only `byok` users.
    pub fn fits_within(self, org: Plan) -> bool {
        match (self, org) {
            (Plan::Byok, _) => true,
            (_, Plan::Byok) => false,
            (user, org) => user <= org,
        }
    }
}

/// Cost/quality preference. The multiplier applies to the price of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerLevel {
    Eco,
    #[default]
    Balanced,
    Precision,
}

impl PowerLevel {
    pub fn parse(s: &str) -> Option<PowerLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "eco" => Some(PowerLevel::Eco),
            "balanced" => Some(PowerLevel::Balanced),
            "precision" => Some(PowerLevel::Precision),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PowerLevel::Eco => "eco",
            PowerLevel::Balanced => "balanced",
            PowerLevel::Precision => "precision",
        }
    }

    /// The price multiplier as an exact fraction `(numerator, denominator)`:
    /// eco 0.5, balanced 1.0, precision 2.0.
    pub fn multiplier(self) -> (i64, i64) {
        match self {
            PowerLevel::Eco => (1, 2),
            PowerLevel::Balanced => (1, 1),
            PowerLevel::Precision => (2, 1),
        }
    }
}

/// What the call is for; used to pick a model when the client leaves it to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Code,
    #[default]
    Chat,
    Rag,
    Creative,
}

impl TaskType {
    pub fn parse(s: &str) -> Option<TaskType> {
        match s {
            "code" => Some(TaskType::Code),
            "chat" => Some(TaskType::Chat),
            "rag" => Some(TaskType::Rag),
            "creative" => Some(TaskType::Creative),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Code => "code",
            TaskType::Chat => "chat",
            TaskType::Rag => "rag",
            TaskType::Creative => "creative",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip() {
        for p in Plan::ALL {
            assert_eq!(Plan::parse(p.as_str()), Some(p));
        }
        assert_eq!(Plan::parse("gold"), None);
    }

    #[test]
    fn power_levels_parse_case_insensitively() {
        assert_eq!(PowerLevel::parse("ECO"), Some(PowerLevel::Eco));
        assert_eq!(
            PowerLevel::parse(" precision "),
            Some(PowerLevel::Precision)
        );
        assert_eq!(PowerLevel::parse("turbo"), None);
        assert_eq!(PowerLevel::default(), PowerLevel::Balanced);
        assert_eq!(PowerLevel::Eco.multiplier(), (1, 2));
        assert_eq!(PowerLevel::Precision.multiplier(), (2, 1));
    }

    #[test]
    fn an_organisations_plan_is_the_highest_its_users_may_have() {
        assert!(Plan::Starter.fits_within(Plan::Enterprise));
        assert!(Plan::Enterprise.fits_within(Plan::Enterprise));
        assert!(!Plan::Enterprise.fits_within(Plan::Starter));
        assert!(!Plan::VipFounder.fits_within(Plan::Enterprise));
        assert!(Plan::Byok.fits_within(Plan::Trial));
        assert!(Plan::Byok.fits_within(Plan::Byok));
        assert!(!Plan::Trial.fits_within(Plan::Byok));
    }
}
