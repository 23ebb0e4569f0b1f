//! English and Simplified Chinese (zh-CN): one table, every user-visible string of the desk in
//! both (the match is exhaustive, so a message without a translation does not compile). The
//! library's own explanations (verdict reasons, error chains) stay in English beside a
//! translated headline.

use axum::http::{header, HeaderMap};
use civic_reader::terminal::Role;
use civic_registry::credential::Kind;
use civic_registry::status::CredentialStatus;
use civic_registry::verdict::Verdict;

use super::guard::cookie;

/// The cookie that remembers the language.
pub const LANG_COOKIE: &str = "civic_desk_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }
    /// The BCP 47 tag for `lang=`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh-CN",
        }
    }
    pub fn from_code(s: &str) -> Lang {
        if s.starts_with("zh") {
            Lang::Zh
        } else {
            Lang::En
        }
    }
    pub fn other(self) -> Lang {
        match self {
            Lang::En => Lang::Zh,
            Lang::Zh => Lang::En,
        }
    }
}

/// The language of a request: the cookie set by the switch, else the browser's first choice.
pub fn lang_of(headers: &HeaderMap) -> Lang {
    if let Some(c) = cookie(headers, LANG_COOKIE) {
        return Lang::from_code(c);
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| Lang::from_code(v.trim_start()))
        .unwrap_or(Lang::En)
}

macro_rules! messages {
    ($($name:ident => $en:expr, $zh:expr;)*) => {
        /// A user-visible message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum M { $($name),* }
        impl M {
            #[cfg(test)]
            pub const ALL: &'static [M] = &[$(M::$name),*];
            pub fn t(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((M::$name, Lang::En) => $en, (M::$name, Lang::Zh) => $zh,)*
                }
            }
        }
    };
}

messages! {
    Title => "Civic Card desk", "市民卡服务台";
    LanguageName => "English", "中文";
    SkipToContent => "Skip to content", "跳到正文";
    Views => "Views", "视图";
    Clinic => "Clinic", "诊所";
    Office => "Issuing office", "发卡办公室";
    Citizen => "Citizen", "市民";
    ReaderStatus => "Readers and cards", "读卡器与卡片";
    CardInserted => "card inserted", "已插卡";
    NoCard => "no card", "无卡";
    ServiceDown => "The smart-card service (pcscd) is not running", "智能卡服务（pcscd）未运行";
    NoReaders => "No card reader connected", "未连接读卡器";
    Busy => "Working with the card… keep it in the reader", "正在读写卡片……请勿取出";
    BusyRefused => "Another card operation is running (or a batch is waiting for cards): try again when it is done.", "另一项卡片操作正在进行（或批量发卡正在等待卡片）：请稍后再试。";
    Refused => "Refused", "已拒绝";
    RefusedHost => "Refused: this request was addressed to another host name. Open the desk at the address it printed (127.0.0.1).", "已拒绝：此请求的主机名不符。请使用服务台启动时打印的地址（127.0.0.1）。";
    RefusedToken => "Refused: the desk's access token is missing or wrong. Open the desk with the address it printed when it started.", "已拒绝：缺少访问令牌或令牌错误。请使用服务台启动时打印的地址打开。";
    RefusedOrigin => "Refused: this request came from another web page (cross-origin). Only the desk's own pages can change anything.", "已拒绝：此请求来自其他网页（跨源）。只有服务台自己的页面才能进行更改。";
    NotFound => "No such page.", "没有此页面。";
    Scan => "Scan card", "扫描卡片";
    ScanHint => "Checks the chip and every credential against the registry.", "验证芯片并向登记库核对每项凭证。";
    ScanFailed => "The scan did not complete.", "扫描未完成。";
    OverallValid => "VALID: the card is genuine and every credential read is valid", "有效：卡片为真，所读凭证全部有效";
    OverallNotValid => "NOT VALID", "无效";
    CardNumber => "Card number", "卡号";
    Chip => "Chip", "芯片";
    ChipPassed => "authenticated", "认证通过";
    ChipFailed => "FAILED: not the card its credentials were issued to", "失败：不是凭证所属的卡片";
    EmergencyData => "Emergency data", "急救信息";
    Credentials => "Credentials", "凭证";
    Kind => "Credential", "凭证类型";
    Verdict => "Verdict", "结论";
    Issuer => "Issuer", "签发机构";
    Details => "Details", "详情";
    NotRead => "not read", "未读取";
    None => "none", "无";
    RegistryBlock => "Registry block", "登记库区块";
    FromCache => "status from the clinic cache, synced", "状态来自诊所缓存，同步于";
    Ago => "ago", "前";
    BatchBusy => "A batch run is using the readers", "批量发卡正在使用读卡器";
    FromRegistry => "status from the registry, now", "状态来自登记库（实时）";
    Stale => "Warning: the status is older than 24 hours; sync the clinic cache", "警告：状态已超过 24 小时，请同步诊所缓存";
    FullHealth => "Full health record", "完整健康档案";
    ConsentHint => "The citizen enters their PIN to let the clinic read the full health record.", "请市民输入 PIN 码，同意诊所读取完整健康档案。";
    CitizenPin => "Citizen's PIN", "市民 PIN 码";
    ShowHealth => "Show health record", "显示健康档案";
    Name => "Name", "姓名";
    Born => "Date of birth", "出生日期";
    BloodType => "Blood type", "血型";
    Allergies => "Allergies", "过敏";
    EmergencyContact => "Emergency contact", "紧急联系人";
    Conditions => "Chronic conditions", "慢性病";
    Vaccination => "Vaccination", "疫苗接种";
    Degree => "Degree", "学位";
    CardLeft => "The card was removed: its data is no longer shown.", "卡片已取出：不再显示其数据。";
    CitizenHint => "Put your card in the reader and enter your PIN to see everything on it.", "请将卡片插入读卡器并输入 PIN 码，查看卡上全部内容。";
    YourPin => "Your PIN (6 digits)", "您的 PIN 码（6 位数字）";
    Open => "Open my card", "打开我的卡";
    ReadFailed => "Your card could not be read.", "无法读取您的卡片。";
    SessionEnded => "Your session ended (the card was removed or you finished).", "会话已结束（卡片已取出或您已结束）。";
    YourRecords => "Your records", "您的记录";
    Issued => "issued", "签发于";
    Expires => "expires", "有效期至";
    Slot => "Slot", "槽位";
    AccessLog => "Access log: who read what, when", "访问记录：谁在何时读取了什么";
    When => "When", "时间";
    Terminal => "Terminal", "终端";
    Role => "Role", "角色";
    WhatRead => "What was read", "读取内容";
    Export => "Export a credential for another agency", "导出凭证给其他机构";
    ExportHint => "A file with the credential and its proof; the agency verifies it against the registry.", "包含凭证及其证明的文件；接收机构可向登记库核验。";
    Download => "Download", "下载";
    ChangePin => "Change PIN", "修改 PIN 码";
    CurrentPin => "Current PIN", "当前 PIN 码";
    NewPin => "New PIN (6 digits)", "新 PIN 码（6 位数字）";
    RepeatPin => "Repeat the new PIN", "再次输入新 PIN 码";
    PinChanged => "PIN changed.", "PIN 码已修改。";
    PinChangeFailed => "The PIN was not changed.", "PIN 码未修改。";
    Finish => "Finish", "结束";
    WrongPin => "Wrong PIN:", "PIN 码错误：";
    TriesLeft => "tries left", "次剩余尝试";
    PinBlocked => "The PIN is blocked: an issuing office must unblock it.", "PIN 码已锁定：须由发卡办公室解锁。";
    PasswordRefused => "The card refused the PIN or access number.", "卡片拒绝了 PIN 码或访问号。";
    CardRemoved => "The card was removed during the operation: nothing was half-written. Put it back and try again.", "操作期间卡片被取出：没有写入一半的数据。请重新插卡后再试。";
    ServiceGone => "The smart-card service or the reader went away during the operation.", "操作期间智能卡服务或读卡器断开。";
    PinFormat => "A PIN is exactly 6 digits.", "PIN 码必须是 6 位数字。";
    PinsDiffer => "The two PINs differ.", "两次输入的 PIN 码不一致。";
    BadInput => "The form is not complete or not valid:", "表单不完整或无效：";
    Provision => "Provision a blank card", "为空白卡发卡";
    ProvisionHint => "Put a blank card in the reader. Empty health fields: no health credential; no degrees: no education credential.", "请将空白卡插入读卡器。健康栏为空则不发健康凭证；无学位则不发教育凭证。";
    CardIdHint => "empty: a new number is generated", "留空则自动生成卡号";
    DateHint => "YYYY-MM-DD", "年-月-日（YYYY-MM-DD）";
    BloodHint => "A+ A- B+ B- AB+ AB- O+ O-", "A+ A- B+ B- AB+ AB- O+ O-";
    ListHint => "several: separate with ;", "多项以 ; 分隔";
    VaccinationHint => "name@YYYY-MM-DD; …", "名称@年-月-日；……";
    DegreeHint => "title@institution@year; …", "学位@院校@年份；……";
    ProvisionGo => "Provision card", "发卡";
    Provisioned => "provisioned", "已发卡";
    ProvisionFailed => "The card was not provisioned.", "发卡未完成。";
    Can => "Access number (CAN, print it on the card):", "访问号（CAN，请印在卡面上）：";
    ChangeStatus => "Revoke, suspend or reinstate a credential", "吊销、暂停或恢复凭证";
    Action => "Action", "操作";
    Revoke => "Revoke (final)", "吊销（不可恢复）";
    Suspend => "Suspend", "暂停";
    Reinstate => "Reinstate", "恢复";
    Apply => "Apply", "执行";
    StatusFailed => "The status was not changed.", "状态未更改。";
    Unblock => "Unblock the PIN", "解锁 PIN 码";
    UnblockHint => "Sets a new PIN on the card in the reader (the office's terminal).", "以办公室终端为读卡器中的卡设置新 PIN 码。";
    UnblockFailed => "The PIN was not reset.", "PIN 码未重置。";
    PinReset => "PIN reset", "PIN 码已重置";
    Batch => "Batch provisioning", "批量发卡";
    BatchHint => "A CSV file, one citizen per row (the columns of `civic provision --batch`). Its PIN column is sensitive: delete the file after the run. Broken rows are skipped and listed; running the same file again resumes.", "CSV 文件，每行一位市民（列与 `civic provision --batch` 相同）。PIN 列为敏感信息：完成后请删除文件。有误的行会被跳过并列出；再次运行同一文件即可续做。";
    BatchFile => "Batch file (CSV)", "批量文件（CSV）";
    BatchGo => "Start batch", "开始批量发卡";
    Uploading => "Uploading…", "上传中……";
    NotABatchFile => "Not a batch file", "不是批量文件";
    PassKey => "Pass 1 of 2: keying cards", "第 1/2 步：生成卡片密钥";
    PassWrite => "Pass 2 of 2: writing cards", "第 2/2 步：写入卡片";
    Progress => "Batch progress", "批量进度";
    BatchDone => "Batch finished", "批量发卡完成";
    AlreadyDone => "already done earlier", "此前已完成";
    Skipped => "skipped", "已跳过";
    Line => "Line", "第几行";
    RowsSkipped => "These rows were not provisioned (nothing was written for them):", "以下行未发卡（未写入任何内容）：";
    BatchStopped => "The batch stopped before the end: run the same file again to resume.", "批量发卡中途停止：再次运行同一文件即可续做。";
    BackToOffice => "Back to the office", "返回办公室";
}

pub fn kind_name(lang: Lang, k: Kind) -> &'static str {
    match (k, lang) {
        (Kind::Identity, Lang::En) => "Identity",
        (Kind::Identity, Lang::Zh) => "身份",
        (Kind::Health, Lang::En) => "Health",
        (Kind::Health, Lang::Zh) => "健康",
        (Kind::Education, Lang::En) => "Education",
        (Kind::Education, Lang::Zh) => "教育",
        (Kind::Emergency, Lang::En) => "Emergency",
        (Kind::Emergency, Lang::Zh) => "急救",
    }
}

pub fn verdict_label(lang: Lang, v: Verdict) -> &'static str {
    match lang {
        Lang::En => v.label(),
        Lang::Zh => match v {
            Verdict::Valid => "有效",
            Verdict::Revoked => "已吊销",
            Verdict::Suspended => "已暂停",
            Verdict::Expired => "已过期",
            Verdict::UnknownIssuer => "未知签发机构",
            Verdict::IssuerNotAuthorised => "签发机构未获授权",
            Verdict::IssuerKeyRetired => "签发密钥已停用",
            Verdict::NotAnchored => "未登记",
            Verdict::Forged => "伪造",
            Verdict::Cloned => "克隆卡",
        },
    }
}

pub fn status_name(lang: Lang, s: CredentialStatus) -> &'static str {
    match (s, lang) {
        (CredentialStatus::Valid, Lang::En) => "valid",
        (CredentialStatus::Valid, Lang::Zh) => "有效",
        (CredentialStatus::Revoked, Lang::En) => "revoked",
        (CredentialStatus::Revoked, Lang::Zh) => "已吊销",
        (CredentialStatus::Suspended, Lang::En) => "suspended",
        (CredentialStatus::Suspended, Lang::Zh) => "已暂停",
    }
}

pub fn role_name(lang: Lang, r: Role) -> &'static str {
    match (r, lang) {
        (_, Lang::En) => r.name(),
        (Role::Clinic, Lang::Zh) => "诊所",
        (Role::IssuingOffice, Lang::Zh) => "发卡办公室",
        (Role::EducationOffice, Lang::Zh) => "教育机构",
    }
}
