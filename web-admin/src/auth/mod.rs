//! Who may use the panel and the API: the admin password, its sessions,
//! login rate limiting, and working out who sent a request.

pub mod limiter;
pub mod password;
pub mod principal;
pub mod sessions;

pub use limiter::LoginLimiter;
pub use principal::Principal;
pub use sessions::{Session, Sessions};
