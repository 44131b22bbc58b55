// Meterpoort customer portal: plain DOM + fetch on top of /v1/me/* (no build step, no CDN).
//
// The customer token arrives in the URL fragment (#token=...) when the supplier's portal embeds
// this page: browsers never send fragments to the server, so it stays out of access logs. It is
// kept in sessionStorage (gone when the tab closes) and removed from the address bar at once.
// Every value from the API is put in the page with textContent, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "meterpoort.token";
  const LANG_KEY = "meterpoort.lang";
  const LANGS = ["nl", "en"];

  // ---- texts -----------------------------------------------------------------------------------

  const STRINGS = {
    nl: {
      pageTitle: "Meterpoort – mijn meetgegevens",
      skip: "Naar de inhoud",
      title: "Mijn meetgegevens",
      language: "Taal",
      signout: "Afmelden",
      signinTitle: "Aanmelden",
      signinHelp: "Open deze pagina vanuit het klantportaal van uw energieleverancier. Voor ontwikkeling: plak een klanttoken.",
      tokenLabel: "Klanttoken",
      tokenHint: "Bijvoorbeeld de uitvoer van: python -m gateway token customer KLANTNUMMER",
      tokenUse: "Token gebruiken",
      tokenEmpty: "Vul een token in.",
      connectionsTitle: "Mijn aansluitingen",
      connectionsIntro: "Per contract op een aansluiting kiest u welke meetgegevens wij op afstand uitlezen, en aan welke doelen u kwartier- of uurwaarden geeft. Beëindigde contracten (bijvoorbeeld na een verhuizing) blijven hier ter inzage staan.",
      noConnections: "Er zijn geen aansluitingen op uw naam.",
      electricity: "Elektriciteit",
      gas: "Gas",
      ean: "EAN",
      contractStart: "Contract vanaf",
      contractEnd: "Contract tot",
      contractOpen: "lopend",
      contractEndReason: "Reden einde",
      "contractReason_contract-ended": "Contract afgelopen",
      "contractReason_move-out": "Verhuisd",
      contractReason_switch: "Overgestapt naar een andere leverancier",
      contractEndedBadge: "Beëindigd",
      contractUpcomingBadge: "Nog niet begonnen",
      contractEndedNote: "Dit contract is beëindigd en staat hier alleen ter inzage: keuzes en toestemmingen kunt u niet meer wijzigen. De meetgegevens en logboeken van dit contract blijven in uw download en in de logboeken hieronder.",
      contractUpcomingNote: "Dit contract gaat in op {date}. Vanaf dan kunt u er toestemming voor geven.",
      levelLegend: "Meetgegevens op afstand",
      level_daily: "Dagstanden (standaard)",
      level_monthly: "Alleen maandstanden",
      level_none: "Niet op afstand uitlezen",
      levelHelp_daily: "Eén meterstand per dag en per maand, voor uw rekening en verbruiksoverzicht. Hiervoor is geen toestemming nodig.",
      levelHelp_monthly: "U maakt bezwaar tegen dagstanden: wij lezen alleen één stand per maand uit, het minimum voor de rekening.",
      levelHelp_none: "Wij lezen uw meter niet op afstand uit. U geeft zelf meterstanden door.",
      levelIntervalNote: "Kwartierwaarden (elektriciteit) en uurwaarden (gas) bewaren wij alleen met uw toestemming hieronder, en alleen als dagstanden aan staan.",
      levelSave: "Keuze opslaan",
      levelSaved: "Uw keuze is opgeslagen: {level}.",
      levelUnchanged: "Deze keuze was al ingesteld.",
      consentsTitle: "Toestemming voor kwartier- en uurwaarden",
      noConsents: "U heeft voor deze aansluiting nog geen toestemming gegeven.",
      noConsentsContract: "Onder dit contract heeft u geen toestemming gegeven.",
      colPurpose: "Doel",
      colNotice: "Toestemmingstekst",
      colGranted: "Gegeven op",
      colExpires: "Geldig tot",
      colStatus: "Status",
      colAction: "Actie",
      noExpiry: "geen einddatum",
      statusActive: "Actief",
      statusExpired: "Verlopen",
      end_revoked: "Ingetrokken",
      end_expired: "Verlopen",
      "end_contract-ended": "Beëindigd: contract afgelopen",
      "end_move-out": "Beëindigd: verhuisd",
      end_switch: "Beëindigd: overgestapt",
      end_erasure: "Beëindigd: gegevens gewist",
      endedOn: "{reason} op {date}",
      revoke: "Intrekken",
      revokeLabel: "Toestemming voor {purpose} intrekken",
      revokeTitle: "Toestemming intrekken?",
      revokeBody: "U trekt uw toestemming voor \u201c{purpose}\u201d in voor aansluiting {ean}. Wij stoppen direct met het bewaren van kwartier- of uurwaarden voor dit doel.",
      revokeConfirm: "Ja, intrekken",
      revoked: "Uw toestemming voor \u201c{purpose}\u201d is ingetrokken.",
      grantTitle: "Nieuwe toestemming geven",
      grantPurpose: "Doel",
      grantChoose: "Kies een doel",
      grantExpires: "Einddatum (optioneel)",
      grantExpiresHint: "Uiterlijk {date}. Zonder einddatum loopt de toestemming tot die datum.",
      grantButton: "Toestemming geven\u2026",
      grantDialogTitle: "Toestemming geven?",
      grantDialogIntro: "U geeft toestemming om kwartier- of uurwaarden van aansluiting {ean} te gebruiken voor:",
      grantConfirm: "Ja, ik geef toestemming",
      granted: "Uw toestemming voor \u201c{purpose}\u201d is vastgelegd.",
      grantNoPurpose: "Kies eerst een doel.",
      grantAllActive: "U heeft voor alle doelen al toestemming gegeven.",
      cancel: "Annuleren",
      noticeVersion: "versie {version}",
      noticeMissing: "De tekst van versie {version} is niet beschikbaar in deze pagina.",
      onRevoke_keep: "Bij intrekken blijven al bewaarde waarden voor de afgelopen periode bewaard voor dit doel.",
      onRevoke_delete: "Bij intrekken worden de voor dit doel bewaarde waarden direct gewist.",
      receiptDownload: "Ontvangstbewijs downloaden",
      permissionLogTitle: "Logboek toestemmingen",
      permissionLogIntro: "Elke toestemming die u gaf, introk of die afliep.",
      accessLogTitle: "Wie heeft mijn gegevens ingezien",
      accessLogIntro: "Welke afnemer welke meetgegevens van u heeft opgevraagd, en wanneer.",
      colWhen: "Wanneer",
      colEvent: "Gebeurtenis",
      colChannel: "Via",
      colClient: "Afnemer",
      colGranularity: "Soort gegevens",
      colPeriod: "Periode",
      colWhat: "Wat",
      logEmpty: "Nog geen regels.",
      event_granted: "Toestemming gegeven",
      event_revoked: "Toestemming ingetrokken",
      event_expired: "Toestemming verlopen",
      event_ended: "Toestemming beëindigd",
      "event_level-changed": "Keuze meetgegevens: {level}",
      event_read: "Opgevraagd door {client}",
      event_read_consents: "Toestemmingen opgevraagd door {client}",
      event_export: "U heeft uw gegevens gedownload",
      channel_portal: "portaal",
      channel_phone: "telefoon",
      channel_api: "API",
      grantNeedsDaily: "Toestemming voor kwartier- of uurwaarden kan alleen als dagstanden aan staan.",
      gran_P1M: "maandstanden",
      gran_P1D: "dagstanden",
      gran_PT1H: "uurwaarden",
      gran_PT15M: "kwartierwaarden",
      exportTitle: "Mijn gegevens downloaden",
      exportIntro: "Alles wat wij over u bewaren, ook van beëindigde contracten, in een machineleesbaar bestand (JSON).",
      exportButton: "Download mijn gegevens",
      exportDone: "Uw gegevens zijn gedownload als {file}.",
      usageTitle: "Verbruik per dag",
      usageIntro_electricity: "Afname en teruglevering per dag over de laatste drie maanden, berekend uit uw dagstanden: het verschil tussen de meterstand aan het begin van de dag en die aan het begin van de volgende dag. Een dag zonder meterstand blijft leeg.",
      usageIntro_gas: "Gasverbruik per dag over de laatste drie maanden, berekend uit uw dagstanden: het verschil tussen de meterstand aan het begin van de dag en die aan het begin van de volgende dag. Een dag zonder meterstand blijft leeg.",
      usageKeys: "Met de pijltjestoetsen gaat u naar de vorige of volgende staaf; Enter toont die dag per kwartier of uur.",
      usageKeysDay: "Met de pijltjestoetsen gaat u naar de vorige of volgende staaf.",
      usageLoading: "Verbruik laden\u2026",
      usageError: "Het verbruik kon niet worden geladen: {detail}",
      usageEmpty: "Er zijn in deze periode geen meterstanden om verbruik uit te berekenen.",
      usageSummary: "{count} van de {all} perioden hebben een waarde, {gaps} zonder meterstand. Totaal: {total}.",
      usageBar: "{when}: {values}",
      usageImport: "afname {value}",
      usageExport: "teruglevering {value}",
      usageNoData: "geen meterstand",
      usageTable: "Toon de waarden als tabel",
      legendImport: "Afname (boven de lijn)",
      legendExport: "Teruglevering (onder de lijn)",
      legendGas: "Gasverbruik",
      colDate: "Datum",
      colTime: "Tijd",
      colImport: "Afname",
      colExport: "Teruglevering",
      colVolume: "Gasverbruik",
      profileTitle_electricity: "Verbruik per kwartier op \u00e9\u00e9n dag",
      profileTitle_gas: "Verbruik per uur op \u00e9\u00e9n dag",
      profileIntro: "Alleen over de tijd waarin u toestemming gaf voor kwartier- of uurwaarden. Bewaard van {first} tot en met {last}.",
      profileDay: "Dag",
      profileShow: "Toon dag",
      profilePrev: "Vorige dag",
      profileNext: "Volgende dag",
      profileEmpty: "Er zijn geen kwartier- of uurwaarden op {date}.",
      event_read_self: "U heeft uw {granularity} bekeken",
      loading: "Bezig met laden\u2026",
      loaded: "Uw gegevens zijn geladen.",
      errorPrefix: "Dat lukte niet: {detail}",
      errorNetwork: "De server is niet bereikbaar. Probeer het later opnieuw.",
      errorSession: "Uw sessie is verlopen of ongeldig. Meld u opnieuw aan.",
      footer: "Meetgegevens van een dag of langer gebruiken wij zonder toestemming voor uw rekening en verbruiksoverzicht (Elektriciteitswet art. 26ab). Kwartier- en uurwaarden alleen met uw toestemming, die u altijd kunt intrekken.",
    },
    en: {
      pageTitle: "Meterpoort – my meter data",
      skip: "Skip to content",
      title: "My meter data",
      language: "Language",
      signout: "Sign out",
      signinTitle: "Sign in",
      signinHelp: "Open this page from your energy supplier's customer portal. For development: paste a customer token.",
      tokenLabel: "Customer token",
      tokenHint: "For example the output of: python -m gateway token customer CUSTOMER_ID",
      tokenUse: "Use token",
      tokenEmpty: "Enter a token.",
      connectionsTitle: "My connections",
      connectionsIntro: "For each contract on a connection, choose which meter readings we collect remotely, and for which purposes you allow 15-minute or hourly values. Ended contracts (after a move, for example) stay here for your information.",
      noConnections: "There are no connections in your name.",
      electricity: "Electricity",
      gas: "Gas",
      ean: "EAN",
      contractStart: "Contract from",
      contractEnd: "Contract until",
      contractOpen: "ongoing",
      contractEndReason: "Reason for the end",
      "contractReason_contract-ended": "Contract ended",
      "contractReason_move-out": "Moved out",
      contractReason_switch: "Switched to another supplier",
      contractEndedBadge: "Ended",
      contractUpcomingBadge: "Not started yet",
      contractEndedNote: "This contract has ended and is shown for your information only: its choices and consents can no longer be changed. Its meter data and logs stay in your download and in the logs below.",
      contractUpcomingNote: "This contract starts on {date}. From then on you can give consent for it.",
      levelLegend: "Remote meter readings",
      level_daily: "Daily readings (default)",
      level_monthly: "Monthly readings only",
      level_none: "No remote reading",
      levelHelp_daily: "One meter reading per day and per month, for your bill and consumption overview. No consent is needed for this.",
      levelHelp_monthly: "You object to daily readings: we collect only one reading a month, the minimum for billing.",
      levelHelp_none: "We do not read your meter remotely. You submit meter readings yourself.",
      levelIntervalNote: "We keep 15-minute values (electricity) and hourly values (gas) only with your consent below, and only while daily readings are on.",
      levelSave: "Save choice",
      levelSaved: "Your choice has been saved: {level}.",
      levelUnchanged: "This choice was already set.",
      consentsTitle: "Consent for 15-minute and hourly values",
      noConsents: "You have not given any consent for this connection yet.",
      noConsentsContract: "You gave no consent under this contract.",
      colPurpose: "Purpose",
      colNotice: "Consent text",
      colGranted: "Given on",
      colExpires: "Valid until",
      colStatus: "Status",
      colAction: "Action",
      noExpiry: "no end date",
      statusActive: "Active",
      statusExpired: "Expired",
      end_revoked: "Revoked",
      end_expired: "Expired",
      "end_contract-ended": "Ended: contract ended",
      "end_move-out": "Ended: moved out",
      end_switch: "Ended: switched supplier",
      end_erasure: "Ended: data erased",
      endedOn: "{reason} on {date}",
      revoke: "Revoke",
      revokeLabel: "Revoke consent for {purpose}",
      revokeTitle: "Revoke consent?",
      revokeBody: "You revoke your consent for \u201c{purpose}\u201d on connection {ean}. We stop keeping 15-minute or hourly values for this purpose at once.",
      revokeConfirm: "Yes, revoke",
      revoked: "Your consent for \u201c{purpose}\u201d has been revoked.",
      grantTitle: "Give a new consent",
      grantPurpose: "Purpose",
      grantChoose: "Choose a purpose",
      grantExpires: "End date (optional)",
      grantExpiresHint: "{date} at the latest. Without an end date, the consent runs until then.",
      grantButton: "Give consent\u2026",
      grantDialogTitle: "Give consent?",
      grantDialogIntro: "You allow us to use the 15-minute or hourly values of connection {ean} for:",
      grantConfirm: "Yes, I consent",
      granted: "Your consent for \u201c{purpose}\u201d has been recorded.",
      grantNoPurpose: "Choose a purpose first.",
      grantAllActive: "You have already given consent for every purpose.",
      cancel: "Cancel",
      noticeVersion: "version {version}",
      noticeMissing: "The text of version {version} is not available in this page.",
      onRevoke_keep: "If you revoke, values already kept for the past period stay kept for this purpose.",
      onRevoke_delete: "If you revoke, the values kept for this purpose are deleted at once.",
      receiptDownload: "Download receipt",
      permissionLogTitle: "Permission log",
      permissionLogIntro: "Every consent you gave or revoked, and every consent that ended.",
      accessLogTitle: "Who accessed my data",
      accessLogIntro: "Which recipient requested which of your meter data, and when.",
      colWhen: "When",
      colEvent: "Event",
      colChannel: "Via",
      colClient: "Recipient",
      colGranularity: "Kind of data",
      colPeriod: "Period",
      colWhat: "What",
      logEmpty: "No entries yet.",
      event_granted: "Consent given",
      event_revoked: "Consent revoked",
      event_expired: "Consent expired",
      event_ended: "Consent ended",
      "event_level-changed": "Meter reading choice: {level}",
      event_read: "Requested by {client}",
      event_read_consents: "Consents requested by {client}",
      event_export: "You downloaded your data",
      channel_portal: "portal",
      channel_phone: "phone",
      channel_api: "API",
      grantNeedsDaily: "Consent for 15-minute or hourly values is only possible while daily readings are on.",
      gran_P1M: "monthly readings",
      gran_P1D: "daily readings",
      gran_PT1H: "hourly values",
      gran_PT15M: "15-minute values",
      exportTitle: "Download my data",
      exportIntro: "Everything we hold about you, ended contracts included, in a machine-readable file (JSON).",
      exportButton: "Download my data",
      exportDone: "Your data has been downloaded as {file}.",
      usageTitle: "Consumption per day",
      usageIntro_electricity: "Import and export per day over the last three months, computed from your daily readings: the difference between the meter reading at the start of a day and the one at the start of the next day. A day without a meter reading stays empty.",
      usageIntro_gas: "Gas consumption per day over the last three months, computed from your daily readings: the difference between the meter reading at the start of a day and the one at the start of the next day. A day without a meter reading stays empty.",
      usageKeys: "Arrow keys move to the previous or next bar; Enter shows that day in 15-minute or hourly values.",
      usageKeysDay: "Arrow keys move to the previous or next bar.",
      usageLoading: "Loading consumption\u2026",
      usageError: "The consumption could not be loaded: {detail}",
      usageEmpty: "There are no meter readings in this period to compute consumption from.",
      usageSummary: "{count} of {all} periods have a value, {gaps} without a meter reading. Total: {total}.",
      usageBar: "{when}: {values}",
      usageImport: "import {value}",
      usageExport: "export {value}",
      usageNoData: "no meter reading",
      usageTable: "Show the values as a table",
      legendImport: "Import (above the line)",
      legendExport: "Export (below the line)",
      legendGas: "Gas consumption",
      colDate: "Date",
      colTime: "Time",
      colImport: "Import",
      colExport: "Export",
      colVolume: "Gas consumption",
      profileTitle_electricity: "15-minute consumption on one day",
      profileTitle_gas: "Hourly consumption on one day",
      profileIntro: "Only for the time you consented to 15-minute or hourly values. Kept from {first} to {last}.",
      profileDay: "Day",
      profileShow: "Show day",
      profilePrev: "Previous day",
      profileNext: "Next day",
      profileEmpty: "There are no 15-minute or hourly values on {date}.",
      event_read_self: "You viewed your {granularity}",
      loading: "Loading\u2026",
      loaded: "Your data has been loaded.",
      errorPrefix: "That did not work: {detail}",
      errorNetwork: "The server cannot be reached. Please try again later.",
      errorSession: "Your session has expired or is invalid. Please sign in again.",
      footer: "We use meter data for periods of a day or longer without consent for your bill and consumption overview (Electricity Act art. 26ab). 15-minute and hourly values only with your consent, which you can revoke at any time.",
    },
  };

  // Purposes the gateway is configured with (consent/model.py DEFAULT_PURPOSES), the notice
  // version the portal shows now, and every notice text by version: a consent records the
  // version the customer saw, so old versions stay here as long as consents refer to them.
  const PURPOSES = {
    "dynamic-tariff-billing": {
      onRevoke: "keep",
      current: "v1",
      name: { nl: "Dynamisch tarief", en: "Dynamic tariff" },
      notices: {
        v1: {
          nl: "Ik geef toestemming om de kwartierwaarden (elektriciteit) en uurwaarden (gas) van deze aansluiting te bewaren en te gebruiken voor de berekening van mijn rekening met een dynamisch tarief. Mijn leverancier ontvangt deze waarden alleen voor dit doel. Ik kan deze toestemming altijd intrekken; waarden over de periode waarvoor ik toestemming gaf, blijven dan bewaard zolang de rekening daarover dat vereist.",
          en: "I consent to the 15-minute values (electricity) and hourly values (gas) of this connection being kept and used to calculate my bill on a dynamic tariff. My supplier receives these values for this purpose only. I can revoke this consent at any time; values for the period I consented to stay kept as long as the bill for it requires.",
        },
      },
    },
    "energy-insights": {
      onRevoke: "delete",
      current: "v1",
      name: { nl: "Inzicht in mijn verbruik", en: "Energy insights" },
      notices: {
        v1: {
          nl: "Ik geef toestemming om de kwartierwaarden (elektriciteit) en uurwaarden (gas) van deze aansluiting te bewaren en te gebruiken om mij inzicht te geven in mijn energieverbruik in het klantportaal. Ik kan deze toestemming altijd intrekken; de voor dit doel bewaarde waarden worden dan direct gewist.",
          en: "I consent to the 15-minute values (electricity) and hourly values (gas) of this connection being kept and used to give me insight into my energy use in the customer portal. I can revoke this consent at any time; the values kept for this purpose are then deleted at once.",
        },
      },
    },
  };

  const LEVELS = ["daily", "monthly", "none"];

  // ---- state -----------------------------------------------------------------------------------

  const state = {
    lang: "nl",
    token: null,
    connections: null,
    // purposes the gateway offers (from GET /v1/me/connections) and its longest consent
    purposes: null,
    maxLifetimeDays: 3 * 365,
    permissionLog: null,
    accessLog: null,
    lastReceipt: null,
    // consumption answers by request (a language switch or a re-render draws from here: no new
    // request, so no new access-log entry) and the day chosen for each contract's profile
    usage: new Map(),
    usageDay: new Map(),
    // contracts whose profile the customer asked for (drawn again after a re-render)
    usageShown: new Set(),
  };

  const $ = (sel) => document.querySelector(sel);

  function t(key, vars) {
    const table = STRINGS[state.lang];
    let text = key in table ? table[key] : key in STRINGS.en ? STRINGS.en[key] : key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) {
        text = text.split("{" + name + "}").join(String(value));
      }
    }
    return text;
  }

  // element builder: attributes (on* are listeners) and children (strings become text nodes)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function locale() {
    return state.lang === "nl" ? "nl-NL" : "en-GB";
  }

  function fmtDateTime(value) {
    if (!value) return "";
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return new Intl.DateTimeFormat(locale(), {
      dateStyle: "medium",
      timeStyle: "short",
      timeZone: "Europe/Amsterdam",
    }).format(date);
  }

  function fmtDate(value) {
    if (!value) return "";
    const date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return new Intl.DateTimeFormat(locale(), {
      dateStyle: "medium",
      timeZone: "Europe/Amsterdam",
    }).format(date);
  }

  function purposeName(purpose) {
    const known = PURPOSES[purpose];
    return known ? known.name[state.lang] : purpose;
  }

  function noticeText(purpose, version) {
    const known = PURPOSES[purpose];
    const notice = known && known.notices[version];
    return notice ? notice[state.lang] : t("noticeMissing", { version });
  }

  // ---- messages (aria-live regions) --------------------------------------------------------------

  function announce(text, extra) {
    const status = $("#status");
    status.replaceChildren(...(text ? [el("p", {}, text)] : []), ...(extra ? [extra] : []));
  }

  function showError(text) {
    const box = $("#error");
    box.replaceChildren(el("p", {}, text));
    box.hidden = false;
  }

  function clearError() {
    const box = $("#error");
    box.hidden = true;
    box.replaceChildren();
  }

  // ---- API -------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  async function problemOf(resp) {
    let detail = resp.statusText || "HTTP " + resp.status;
    const type = resp.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        const body = await resp.json();
        if (body && typeof body.detail === "string") detail = body.detail;
        else if (body && typeof body.title === "string") detail = body.title;
      } catch (err) {
        // an unreadable error body: keep the status text
        console.warn("unreadable error body", err);
      }
    }
    return new ApiError(resp.status, detail);
  }

  // paths are relative to the page (/portal → /v1/me/...), so a reverse proxy may mount the
  // gateway under a prefix
  async function request(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, t("errorNetwork"));
    }
    if (!resp.ok) throw await problemOf(resp);
    return resp;
  }

  async function api(method, path, body) {
    const resp = await request(method, path, body);
    if (resp.status === 204) return null;
    return resp.json();
  }

  function list(data, key) {
    // a list answer: {connections: [...]}, {entries: [...]} (or a bare array)
    if (Array.isArray(data)) return data;
    return data && Array.isArray(data[key]) ? data[key] : [];
  }

  function takeConnections(data) {
    state.connections = list(data, "connections");
    if (data && Array.isArray(data.purposes)) state.purposes = data.purposes.map((p) => p.name);
    if (data && Number.isInteger(data.max_consent_lifetime_days)) {
      state.maxLifetimeDays = data.max_consent_lifetime_days;
    }
  }

  function handleError(err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut();
      showError(t("errorSession") + " (" + err.detail + ")");
      return;
    }
    const detail = err instanceof ApiError ? err.detail : String(err);
    showError(err instanceof ApiError && err.status === 0 ? detail : t("errorPrefix", { detail }));
    // refusals by the API are shown above; anything else is a bug in this page
    if (!(err instanceof ApiError)) console.error(err);
  }

  // ---- token -----------------------------------------------------------------------------------

  function takeTokenFromFragment() {
    const hash = window.location.hash;
    if (!hash || hash.length < 2) return;
    const params = new URLSearchParams(hash.slice(1));
    const token = params.get("token");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    params.delete("token");
    const rest = params.toString();
    // out of the address bar, the history entry and any bookmark
    history.replaceState(
      history.state,
      "",
      window.location.pathname + window.location.search + (rest ? "#" + rest : "")
    );
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    state.connections = state.permissionLog = state.accessLog = null;
    state.usage.clear();
    state.usageDay.clear();
    state.usageShown.clear();
    $("#content").hidden = true;
    $("#signout").hidden = true;
    $("#signin").hidden = false;
    $("#connection-list").replaceChildren();
    $("#permission-log-table").replaceChildren();
    $("#access-log-table").replaceChildren();
  }

  function signedIn() {
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (!state.token) {
      signOut();
      return false;
    }
    $("#signin").hidden = true;
    $("#signout").hidden = false;
    return true;
  }

  // ---- loading ---------------------------------------------------------------------------------

  async function loadAll() {
    if (!signedIn()) return;
    announce(t("loading"));
    try {
      const [connections, permissionLog, accessLog] = await Promise.all([
        api("GET", "v1/me/connections"),
        api("GET", "v1/me/permission-log"),
        api("GET", "v1/me/access-log"),
      ]);
      takeConnections(connections);
      state.permissionLog = list(permissionLog, "entries");
      state.accessLog = list(accessLog, "entries");
      clearError();
      $("#content").hidden = false;
      render();
      announce(t("loaded"));
    } catch (err) {
      announce("");
      handleError(err);
    }
  }

  async function reload(focusSelector) {
    try {
      const [connections, permissionLog] = await Promise.all([
        api("GET", "v1/me/connections"),
        api("GET", "v1/me/permission-log"),
      ]);
      takeConnections(connections);
      state.permissionLog = list(permissionLog, "entries");
      render();
    } catch (err) {
      handleError(err);
    }
    const target = focusSelector && document.querySelector(focusSelector);
    if (target) target.focus();
  }

  // ---- rendering -------------------------------------------------------------------------------

  function applyStaticTexts() {
    document.documentElement.lang = state.lang;
    document.title = t("pageTitle");
    for (const node of document.querySelectorAll("[data-i18n]")) {
      node.textContent = t(node.dataset.i18n);
    }
    $("#lang").value = state.lang;
  }

  function render() {
    applyStaticTexts();
    if (state.connections) renderConnections();
    if (state.permissionLog) renderPermissionLog();
    if (state.accessLog) renderAccessLog();
  }

  function consentStatus(consent) {
    // the API's status (active, expired, contract-ended or the end reason) when it gives one
    let status = consent.status;
    if (!status) {
      if (consent.end_reason) status = consent.end_reason;
      else if (consent.expires_at && new Date(consent.expires_at) <= new Date()) status = "expired";
      else status = "active";
    }
    if (status === "active") return { active: true, text: t("statusActive") };
    const reason = known("end_", status);
    if (consent.ended_at) {
      return { active: false, text: t("endedOn", { reason, date: fmtDateTime(consent.ended_at) }) };
    }
    return { active: false, text: reason };
  }

  // A contract's state. The API's `current` (the server's clock) says whether it is in force
  // now; one not in force has ended, or starts later. An older gateway without `current`: the
  // contract's window against this browser's clock.
  function contractState(conn) {
    const now = Date.now();
    const startsLater = new Date(conn.contract_start).getTime() > now;
    if (conn.current === true) return "current";
    if (conn.current === false) return startsLater && !conn.end_reason ? "upcoming" : "ended";
    if (conn.contract_end && new Date(conn.contract_end).getTime() <= now) return "ended";
    return startsLater ? "upcoming" : "current";
  }

  function renderConnections() {
    const container = $("#connection-list");
    if (state.connections.length === 0) {
      container.replaceChildren(el("p", { text: t("noConnections") }));
      return;
    }
    // a level change acts on the customer's latest contract on the EAN (refused once it ended)
    const latest = new Map();
    for (const conn of state.connections) {
      const seen = latest.get(conn.ean);
      if (!seen || new Date(conn.contract_start) > new Date(seen.contract_start)) {
        latest.set(conn.ean, conn);
      }
    }
    // contracts in force (or starting later) first, in the API's order; then the ended ones,
    // the most recently ended first
    const cards = state.connections.map((conn, index) => ({
      conn,
      index,
      phase: contractState(conn),
    }));
    const endOf = (card) => new Date(card.conn.contract_end || 0).getTime();
    cards.sort((a, b) => {
      const aEnded = a.phase === "ended";
      const bEnded = b.phase === "ended";
      if (aEnded !== bEnded) return aEnded ? 1 : -1;
      if (aEnded && endOf(a) !== endOf(b)) return endOf(b) - endOf(a);
      return a.index - b.index;
    });
    container.replaceChildren(
      ...cards.map((card) => {
        const levelEditable = card.phase !== "ended" && latest.get(card.conn.ean) === card.conn;
        return renderConnection(card.conn, card.phase, levelEditable);
      })
    );
  }

  // one card per contract (two contracts on one EAN are two cards), keyed by contract_id
  function renderConnection(conn, phase, levelEditable) {
    const key = String(conn.contract_id || conn.ean).replace(/[^A-Za-z0-9_-]/g, "_");
    const id = "contract-" + key;
    const ended = phase === "ended";
    const current = phase === "current";
    const headingText = (t(conn.commodity) || conn.commodity) + " \u2013 " + t("ean") + " " + conn.ean;
    // the marker is part of the heading: screen readers announce it with the card
    let badge = null;
    let note = null;
    if (ended) {
      badge = el("span", { class: "badge", text: t("contractEndedBadge") });
      note = el("p", { class: "note read-only", text: t("contractEndedNote") });
    } else if (phase === "upcoming") {
      badge = el("span", { class: "badge upcoming", text: t("contractUpcomingBadge") });
      note = el("p", {
        class: "note",
        text: t("contractUpcomingNote", { date: fmtDate(conn.contract_start) }),
      });
    }
    const facts = [
      el("dt", { text: t("contractStart") }),
      el("dd", { text: fmtDate(conn.contract_start) }),
      el("dt", { text: t("contractEnd") }),
      el("dd", { text: conn.contract_end ? fmtDate(conn.contract_end) : t("contractOpen") }),
    ];
    if (ended) {
      facts.push(
        el("dt", { text: t("contractEndReason") }),
        el("dd", {
          class: "end-reason",
          text: known("contractReason_", conn.end_reason || "contract-ended"),
        })
      );
    }
    if (!levelEditable) {
      // the level this contract has (had), read-only
      facts.push(
        el("dt", { text: t("levelLegend") }),
        el("dd", { class: "level", text: known("level_", conn.level || "daily") })
      );
    }
    return el(
      "article",
      {
        class: "connection" + (ended ? " ended" : "") + (phase === "upcoming" ? " upcoming" : ""),
        "aria-labelledby": id + "-title",
        "data-ean": conn.ean,
        "data-contract-id": conn.contract_id,
        "data-state": phase,
      },
      el("h3", { id: id + "-title", tabindex: "-1" }, headingText, badge ? [" ", badge] : null),
      el("dl", { class: "facts" }, facts),
      note,
      phase === "upcoming" ? null : renderUsage(conn, id),
      levelEditable ? renderLevelForm(conn, id) : null,
      renderConsents(conn, id, current),
      // consents are granted on the contract in force now only
      current ? renderGrantForm(conn, id) : null
    );
  }

  function renderLevelForm(conn, id) {
    const current = conn.level || "daily";
    const options = LEVELS.map((level) => {
      const inputId = id + "-level-" + level;
      return el(
        "div",
        { class: "choice" },
        el("input", {
          type: "radio",
          name: id + "-level",
          id: inputId,
          value: level,
          checked: level === current,
          "aria-describedby": inputId + "-help",
        }),
        el("label", { for: inputId, text: t("level_" + level) }),
        el("p", { id: inputId + "-help", class: "hint", text: t("levelHelp_" + level) })
      );
    });
    const form = el(
      "form",
      { class: "level-form", novalidate: true },
      el(
        "fieldset",
        {},
        el("legend", { text: t("levelLegend") }),
        ...options,
        el("p", { class: "note", text: t("levelIntervalNote") })
      ),
      el("button", { type: "submit", class: "secondary", text: t("levelSave") })
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const chosen = form.querySelector("input[type=radio]:checked");
      if (chosen) changeLevel(conn, chosen.value, id);
    });
    return form;
  }

  async function changeLevel(conn, level, id) {
    clearError();
    if (level === conn.level) {
      announce(t("levelUnchanged"));
      return;
    }
    try {
      await api("PUT", "v1/me/connections/" + encodeURIComponent(conn.ean) + "/level", { level });
      announce(t("levelSaved", { level: t("level_" + level) }));
      await reload("#" + id + "-title");
    } catch (err) {
      handleError(err);
    }
  }

  // the contract's consents; revoke buttons only when `editable` (the contract in force now),
  // else its consent history, read-only
  function renderConsents(conn, id, editable) {
    const consents = conn.consents || [];
    const section = el("div", { class: "consents" }, el("h4", { id: id + "-consents", tabindex: "-1", text: t("consentsTitle") }));
    if (consents.length === 0) {
      section.append(el("p", { text: t(editable ? "noConsents" : "noConsentsContract") }));
      return section;
    }
    const rows = consents.map((consent) => {
      const status = consentStatus(consent);
      const name = purposeName(consent.purpose);
      return el(
        "tr",
        { "data-consent-id": consent.consent_id, class: status.active ? "active" : "ended" },
        el("th", { scope: "row", text: name }),
        el(
          "td",
          {},
          el(
            "details",
            {},
            el("summary", { text: t("noticeVersion", { version: consent.notice_version }) }),
            el("p", { text: noticeText(consent.purpose, consent.notice_version) })
          )
        ),
        el("td", { text: fmtDateTime(consent.granted_at) }),
        el("td", { text: consent.expires_at ? fmtDate(consent.expires_at) : t("noExpiry") }),
        el("td", { class: "consent-status", text: status.text }),
        editable
          ? el(
              "td",
              {},
              status.active
                ? el("button", {
                    type: "button",
                    class: "danger",
                    text: t("revoke"),
                    "aria-label": t("revokeLabel", { purpose: name }),
                    onclick: () => revokeConsent(conn, consent, id),
                  })
                : null
            )
          : null
      );
    });
    const columns = ["colPurpose", "colNotice", "colGranted", "colExpires", "colStatus"];
    if (editable) columns.push("colAction");
    section.append(
      el(
        "div",
        { class: "table-wrap" },
        el(
          "table",
          { "aria-labelledby": id + "-consents" },
          el(
            "thead",
            {},
            el(
              "tr",
              {},
              columns.map((key) => el("th", { scope: "col", text: t(key) }))
            )
          ),
          el("tbody", {}, rows)
        )
      )
    );
    return section;
  }

  function renderGrantForm(conn, id) {
    const active = new Set(
      (conn.consents || []).filter((c) => consentStatus(c).active).map((c) => c.purpose)
    );
    // purposes both the gateway offers and this page has a notice text for
    const offered = state.purposes || Object.keys(PURPOSES);
    const available = offered.filter((p) => PURPOSES[p] && !active.has(p));
    const wrap = el("div", { class: "grant" }, el("h4", { id: id + "-grant", text: t("grantTitle") }));
    if ((conn.level || "daily") !== "daily") {
      wrap.append(el("p", { text: t("grantNeedsDaily") }));
      return wrap;
    }
    if (available.length === 0) {
      wrap.append(el("p", { text: t("grantAllActive") }));
      return wrap;
    }
    const selectId = id + "-purpose";
    const dateId = id + "-expires";
    const noticeId = id + "-notice";
    const notice = el("div", { id: noticeId, class: "notice", "aria-live": "polite" });
    const select = el(
      "select",
      { id: selectId, "aria-describedby": noticeId, required: true },
      el("option", { value: "", text: t("grantChoose") }),
      available.map((p) => el("option", { value: p, text: purposeName(p) }))
    );
    const showNotice = () => {
      const purpose = select.value;
      if (!purpose) {
        notice.replaceChildren();
        return;
      }
      const spec = PURPOSES[purpose];
      notice.replaceChildren(
        el("p", { class: "notice-text", text: noticeText(purpose, spec.current) }),
        el("p", { class: "hint", text: t("onRevoke_" + spec.onRevoke) })
      );
    };
    select.addEventListener("change", showNotice);
    const tomorrow = new Date(Date.now() + 86400000).toISOString().slice(0, 10);
    const maxDate = new Date(Date.now() + (state.maxLifetimeDays - 1) * 86400000)
      .toISOString()
      .slice(0, 10);
    const date = el("input", {
      type: "date",
      id: dateId,
      min: tomorrow,
      max: maxDate,
      "aria-describedby": dateId + "-hint",
    });
    const form = el(
      "form",
      // a named form is a landmark: its name includes the card's heading, so the grant forms
      // of two cards are told apart (axe: landmark-unique)
      { class: "grant-form", novalidate: true, "aria-labelledby": id + "-grant " + id + "-title" },
      el("div", { class: "field" }, el("label", { for: selectId, text: t("grantPurpose") }), select),
      notice,
      el(
        "div",
        { class: "field" },
        el("label", { for: dateId, text: t("grantExpires") }),
        el("p", { id: dateId + "-hint", class: "hint", text: t("grantExpiresHint", { date: fmtDate(maxDate + "T12:00:00Z") }) }),
        date
      ),
      el("button", { type: "submit", text: t("grantButton") })
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!select.value) {
        showError(t("grantNoPurpose"));
        select.focus();
        return;
      }
      grantConsent(conn, select.value, date.value, id);
    });
    wrap.append(form);
    return wrap;
  }

  async function grantConsent(conn, purpose, dateValue, id) {
    clearError();
    const spec = PURPOSES[purpose];
    const name = purposeName(purpose);
    const ok = await confirmDialog(
      t("grantDialogTitle"),
      [
        el("p", { text: t("grantDialogIntro", { ean: conn.ean }) }),
        el("p", { class: "dialog-purpose", text: name }),
        el("blockquote", { class: "notice-text", text: noticeText(purpose, spec.current) }),
        el("p", { class: "hint", text: t("onRevoke_" + spec.onRevoke) }),
      ],
      t("grantConfirm"),
      false
    );
    if (!ok) return;
    const body = { ean: conn.ean, purpose, notice_version: spec.current };
    if (dateValue) {
      // the consent ends at the start of the chosen day in the browser's time zone
      body.expires_at = new Date(dateValue + "T00:00:00").toISOString();
    }
    try {
      const answer = await api("POST", "v1/me/consents", body);
      announceWithReceipt(t("granted", { purpose: name }), answer);
      await reload("#" + id + "-consents");
    } catch (err) {
      handleError(err);
    }
  }

  async function revokeConsent(conn, consent, id) {
    clearError();
    const name = purposeName(consent.purpose);
    const ok = await confirmDialog(
      t("revokeTitle"),
      [el("p", { text: t("revokeBody", { purpose: name, ean: conn.ean }) })],
      t("revokeConfirm"),
      true
    );
    if (!ok) return;
    try {
      const answer = await api(
        "POST",
        "v1/me/consents/" + encodeURIComponent(consent.consent_id) + "/revoke"
      );
      announceWithReceipt(t("revoked", { purpose: name }), answer);
      await reload("#" + id + "-consents");
    } catch (err) {
      handleError(err);
    }
  }

  function announceWithReceipt(text, answer) {
    const receipt = answer && answer.receipt;
    if (!receipt) {
      announce(text);
      return;
    }
    const id = (answer.consent && answer.consent.consent_id) || "consent";
    const button = el("button", {
      type: "button",
      class: "secondary",
      text: t("receiptDownload"),
      onclick: () =>
        saveBlob(
          new Blob([JSON.stringify(receipt, null, 2)], { type: "application/json" }),
          "consent-receipt-" + id + ".json"
        ),
    });
    announce(text, button);
  }

  function renderLogTable(container, rows, columns, labelId) {
    if (rows.length === 0) {
      container.replaceChildren(el("p", { text: t("logEmpty") }));
      return;
    }
    const table = el(
      "table",
      { "aria-labelledby": labelId },
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", text: t(c.label) })))),
      el(
        "tbody",
        {},
        rows.map((row) => el("tr", {}, columns.map((c) => el("td", { text: c.value(row) }))))
      )
    );
    container.replaceChildren(table);
  }

  // a known code's text, or the code itself (a newer gateway may add events or reasons)
  function known(prefix, code, vars) {
    const key = prefix + code;
    return key in STRINGS.en ? t(key, vars) : String(code);
  }

  function eventText(row) {
    if (row.event === "level-changed") {
      return t("event_level-changed", { level: known("level_", row.level) });
    }
    const base = known("event_", row.event);
    if (row.reason && row.event !== "expired") return base + " (" + known("end_", row.reason) + ")";
    return base;
  }

  function renderPermissionLog() {
    renderLogTable(
      $("#permission-log-table"),
      state.permissionLog,
      [
        { label: "colWhen", value: (r) => fmtDateTime(r.at) },
        { label: "colEvent", value: eventText },
        { label: "ean", value: (r) => String(r.ean || "") },
        { label: "colPurpose", value: (r) => (r.purpose ? purposeName(r.purpose) : "") },
        { label: "colChannel", value: (r) => (r.channel ? known("channel_", r.channel) : "") },
      ],
      "permission-log-title"
    );
  }

  function accessWhat(row) {
    if (row.kind === "export") return t("event_export");
    if (row.kind === "read" && typeof row.actor === "string" && row.actor.startsWith("customer:")) {
      return t("event_read_self", { granularity: known("gran_", row.granularity || "P1D") });
    }
    if (row.kind === "read") {
      const key = row.data === "consents" ? "event_read_consents" : "event_read";
      return t(key, { client: row.client_name || row.client_id || row.actor || "?" });
    }
    return String(row.kind || "");
  }

  function renderAccessLog() {
    renderLogTable(
      $("#access-log-table"),
      state.accessLog,
      [
        { label: "colWhen", value: (r) => fmtDateTime(r.at) },
        { label: "colWhat", value: accessWhat },
        { label: "ean", value: (r) => (Array.isArray(r.eans) ? r.eans.join(", ") : "") },
        { label: "colGranularity", value: (r) => (r.granularity ? known("gran_", r.granularity) : "") },
        {
          label: "colPeriod",
          value: (r) => (r.from || r.to ? fmtDateTime(r.from) + " \u2013 " + fmtDateTime(r.to) : ""),
        },
      ],
      "access-log-title"
    );
  }

  // ---- consumption charts ----------------------------------------------------------------------
  //
  // Bars drawn as inline SVG by this script. A bar chart is a few dozen lines of SVG; a charting
  // library would be many times this whole page, and plain SVG keeps full control over what
  // assistive technology gets: every bar is focusable (one tab stop per chart, arrow keys move
  // between bars) with an accessible name holding its period and values, and a table under the
  // chart holds the same numbers. A period without a value (a missing meter reading) has no bar
  // and says so in the table: a gap, never a zero.
  //
  // The amounts come computed from GET /v1/me/consumption: a stored daily reading is the meter's
  // registers at the first telegram of the local day (SPEC §3: the earliest measured reading of
  // the period), so a day's amount is the increase from its reading to the next day's.

  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_DAYS = 92; // "the last months": about three
  const INTERVAL_OF = { electricity: "PT15M", gas: "PT1H" };
  const STEP_MS = { PT15M: 15 * 60000, PT1H: 60 * 60000 };
  const CHART = { width: 720, height: 200, left: 8, right: 8, top: 22, bottom: 24 };

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  // plain dates (YYYY-MM-DD) are local days in Europe/Amsterdam, which is how the API reads them
  function amsterdamDay(value) {
    return new Intl.DateTimeFormat("en-CA", {
      timeZone: "Europe/Amsterdam",
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
    }).format(new Date(value));
  }

  function addDays(day, n) {
    const [y, m, d] = day.split("-").map(Number);
    return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
  }

  // a plain day as text in the page's language (noon UTC is that day in Amsterdam)
  function fmtDay(day) {
    return fmtDate(day + "T12:00:00Z");
  }

  function fmtTime(ms) {
    return new Intl.DateTimeFormat(locale(), {
      hour: "2-digit",
      minute: "2-digit",
      timeZone: "Europe/Amsterdam",
    }).format(new Date(ms));
  }

  // Wh and dm³ are integers; shown as kWh and m³ with three decimals: exact, and the same
  // number of digits on every bar and in every language
  function fmtAmount(value, unit) {
    const number = new Intl.NumberFormat(locale(), {
      minimumFractionDigits: 3,
      maximumFractionDigits: 3,
    }).format(value / 1000);
    return number + "\u00a0" + (unit === "Wh" ? "kWh" : "m\u00b3");
  }

  // the amounts of one period: [{key, value}] (electricity import and export, or gas volume)
  function amountsOf(period) {
    if ("volume_dm3" in period) return [{ key: "volume", value: period.volume_dm3 }];
    return [
      { key: "import", value: period.import_wh },
      { key: "export", value: period.export_wh },
    ];
  }

  function valuesText(period, unit) {
    return amountsOf(period)
      .map((a) => {
        const value = fmtAmount(a.value, unit);
        return a.key === "volume" ? value : t(a.key === "import" ? "usageImport" : "usageExport", { value });
      })
      .join(", ");
  }

  function fetchUsage(conn, granularity, from, to) {
    const key = [conn.contract_id, granularity, from, to].join("|");
    if (!state.usage.has(key)) {
      const query = new URLSearchParams({ ean: conn.ean, granularity, from, to });
      const answer = api("GET", "v1/me/consumption?" + query.toString());
      state.usage.set(key, answer);
      // a failed request is asked again next time
      answer.catch(() => state.usage.delete(key));
    }
    return state.usage.get(key);
  }

  // the days the daily chart covers: the last CHART_DAYS days of the contract up to today
  function usageRange(conn) {
    let to = addDays(amsterdamDay(Date.now()), 1);
    if (conn.contract_end) {
      const end = addDays(amsterdamDay(new Date(conn.contract_end).getTime() - 1), 1);
      if (end < to) to = end;
    }
    let from = addDays(to, -CHART_DAYS);
    const start = amsterdamDay(conn.contract_start);
    if (start > from) from = start;
    return { from, to };
  }

  function renderUsage(conn, id) {
    const range = usageRange(conn);
    const headingId = id + "-usage";
    const daily = el("div", { class: "chart-area", id: id + "-daily", "aria-busy": "true" }, el("p", { text: t("usageLoading") }));
    const profile = el("div", { class: "profile", id: id + "-profile" });
    const wrap = el(
      "div",
      { class: "usage", "data-commodity": conn.commodity },
      el("h4", { id: headingId, text: t("usageTitle") }),
      el("p", { class: "hint", text: t("usageIntro_" + conn.commodity) }),
      daily,
      profile
    );
    if (range.from >= range.to) {
      daily.replaceChildren(el("p", { text: t("usageEmpty") }));
      daily.removeAttribute("aria-busy");
      return wrap;
    }
    const onDay = (day) => {
      state.usageDay.set(conn.contract_id, day);
      state.usageShown.add(conn.contract_id);
      showProfile(conn, id, profile, true);
    };
    fetchUsage(conn, "P1D", range.from, range.to).then(
      (answer) => {
        const slots = [];
        for (let day = range.from; day < range.to; day = addDays(day, 1)) {
          slots.push({ key: day, when: fmtDay(day), column: fmtDay(day) });
        }
        const byKey = new Map(answer.periods.map((p) => [amsterdamDay(p.period_start), p]));
        const interval = answer.interval || null;
        drawChart(daily, {
          id: id + "-daily",
          headingId,
          slots,
          byKey,
          unit: answer.unit,
          commodity: conn.commodity,
          columnKey: "colDate",
          tick: (slot, index) => (index === 0 || slot.key.endsWith("-01") ? fmtDay(slot.key) : null),
          activate: interval ? (slot) => onDay(slot.key) : null,
        });
        if (interval) {
          conn.interval = interval;
          if (!state.usageDay.has(conn.contract_id)) {
            state.usageDay.set(conn.contract_id, amsterdamDay(interval.last));
          }
          showProfile(conn, id, profile, state.usageShown.has(conn.contract_id));
        }
      },
      (err) => usageFailed(daily, err)
    );
    return wrap;
  }

  function usageFailed(container, err) {
    container.removeAttribute("aria-busy");
    if (err instanceof ApiError && err.status === 401) {
      handleError(err);
      return;
    }
    const detail = err instanceof ApiError ? err.detail : String(err);
    container.replaceChildren(el("p", { class: "error", text: t("usageError", { detail }) }));
    if (!(err instanceof ApiError)) console.error(err);
  }

  // the day picker and, once a day is asked for (`load`), that day's profile
  function showProfile(conn, id, container, load) {
    const interval = conn.interval;
    const first = amsterdamDay(interval.first);
    const last = amsterdamDay(interval.last);
    const day = state.usageDay.get(conn.contract_id) || last;
    const headingId = id + "-profile-title";
    const inputId = id + "-day";
    const input = el("input", { type: "date", id: inputId, min: first, max: last, value: day, required: true });
    const chart = el("div", { class: "chart-area", id: id + "-profile-chart" });
    const form = el(
      "form",
      { class: "day-form", novalidate: true },
      el("div", { class: "field" }, el("label", { for: inputId, text: t("profileDay") }), input),
      el(
        "div",
        { class: "actions" },
        el("button", { type: "submit", text: t("profileShow") }),
        el("button", { type: "button", class: "secondary", "data-step": "-1", text: t("profilePrev"), onclick: () => step(-1) }),
        el("button", { type: "button", class: "secondary", "data-step": "1", text: t("profileNext"), onclick: () => step(1) })
      )
    );
    // the form is drawn again with the new day; the focus goes back to the control used
    const choose = (value, focusSelector) => {
      if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return;
      state.usageDay.set(conn.contract_id, value);
      state.usageShown.add(conn.contract_id);
      showProfile(conn, id, container, true);
      const target = container.querySelector(focusSelector);
      if (target) target.focus();
    };
    const step = (n) => choose(addDays(input.value || day, n), '[data-step="' + n + '"]');
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      choose(input.value, "#" + inputId);
    });
    container.replaceChildren(
      el("h4", { id: headingId, text: t("profileTitle_" + conn.commodity) }),
      el("p", { class: "hint", text: t("profileIntro", { first: fmtDay(first), last: fmtDay(last) }) }),
      form,
      chart
    );
    if (!load) return;
    const granularity = INTERVAL_OF[conn.commodity];
    chart.setAttribute("aria-busy", "true");
    chart.replaceChildren(el("p", { text: t("usageLoading") }));
    fetchUsage(conn, granularity, day, addDays(day, 1)).then(
      (answer) => {
        const slots = [];
        const step = STEP_MS[granularity];
        const end = new Date(answer.to).getTime();
        // from the day's local midnight to the next: 92, 96 or 100 quarters (23, 24, 25 hours)
        for (let ms = new Date(answer.from).getTime(); ms < end; ms += step) {
          const range = fmtTime(ms) + "\u2013" + fmtTime(ms + step);
          slots.push({ key: ms, when: fmtDay(day) + " " + range, column: range });
        }
        const byKey = new Map(answer.periods.map((p) => [new Date(p.period_start).getTime(), p]));
        if (answer.periods.length === 0) {
          chart.removeAttribute("aria-busy");
          chart.replaceChildren(el("p", { text: t("profileEmpty", { date: fmtDay(day) }) }));
          return;
        }
        drawChart(chart, {
          id: id + "-profile-chart",
          headingId,
          slots,
          byKey,
          unit: answer.unit,
          commodity: conn.commodity,
          columnKey: "colTime",
          tick: (slot, index) => (new Date(slot.key).getMinutes() === 0 && index % (granularity === "PT15M" ? 16 : 4) === 0 ? fmtTime(slot.key) : null),
          activate: null,
        });
      },
      (err) => usageFailed(chart, err)
    );
  }

  // one chart: `slots` (every period of the range, in order; {key, when, column}), `byKey` the
  // periods that have a value; a bar per period with a value, a table row per slot
  function drawChart(container, spec) {
    const { slots, byKey, unit } = spec;
    const present = slots.filter((slot) => byKey.has(slot.key));
    container.removeAttribute("aria-busy");
    if (present.length === 0) {
      container.replaceChildren(el("p", { text: t("usageEmpty") }));
      return;
    }
    const electricity = spec.commodity === "electricity";
    let up = 0;
    let down = 0;
    const totals = { import: 0, export: 0, volume: 0 };
    for (const slot of present) {
      for (const a of amountsOf(byKey.get(slot.key))) {
        totals[a.key] += a.value;
        if (a.key === "export") down = Math.max(down, a.value);
        else up = Math.max(up, a.value);
      }
    }
    const c = CHART;
    const plot = c.height - c.top - c.bottom;
    const scale = up + down > 0 ? plot / (up + down) : 0;
    const base = c.top + up * scale;
    const slotWidth = (c.width - c.left - c.right) / slots.length;
    const barWidth = Math.max(1, slotWidth * 0.72);
    const summaryId = spec.id + "-summary";
    const keysId = spec.id + "-keys";

    const bars = [];
    const ticks = [];
    slots.forEach((slot, index) => {
      const x = c.left + index * slotWidth;
      const label = spec.tick(slot, index);
      if (label) {
        // a label near the right edge ends at its slot instead of starting there (not clipped)
        const nearEnd = x > c.width - 90;
        ticks.push(
          svg("text", {
            x: nearEnd ? x + slotWidth : x,
            y: c.height - 6,
            class: "tick",
            "text-anchor": nearEnd ? "end" : "start",
            text: label,
          })
        );
      }
      const period = byKey.get(slot.key);
      if (!period) return; // a gap: no bar
      const parts = [
        // the whole column: a target for the pointer and the focus outline, also for a zero
        svg("rect", { class: "hit", x: x, y: c.top - 4, width: slotWidth, height: plot + 8 }),
      ];
      for (const a of amountsOf(period)) {
        const h = a.value * scale;
        const y = a.key === "export" ? base : base - h;
        parts.push(svg("rect", { class: a.key, x: x + (slotWidth - barWidth) / 2, y, width: barWidth, height: h }));
      }
      const name = t("usageBar", { when: slot.when, values: valuesText(period, unit) });
      const bar = svg("g", { class: "bar", role: "img", "aria-label": name, tabindex: "-1", "data-period": slot.key }, parts);
      if (spec.activate) {
        bar.addEventListener("click", () => spec.activate(slot));
      }
      bar.addEventListener("focus", () => {
        for (const other of bars) other.setAttribute("tabindex", other === bar ? "0" : "-1");
      });
      bars.push(bar);
    });
    // one tab stop per chart: the latest bar
    bars[bars.length - 1].setAttribute("tabindex", "0");

    const picture = svg(
      "svg",
      {
        class: "chart",
        viewBox: `0 0 ${c.width} ${c.height}`,
        role: "group",
        "aria-labelledby": spec.headingId,
        "aria-describedby": summaryId + " " + keysId,
      },
      svg("text", { x: c.left, y: 14, class: "tick", text: fmtAmount(up, unit), "aria-hidden": "true" }),
      svg("line", { class: "axis", x1: c.left, x2: c.width - c.right, y1: base, y2: base }),
      svg("g", { "aria-hidden": "true" }, ticks),
      bars
    );
    picture.addEventListener("keydown", (event) => {
      const at = bars.indexOf(document.activeElement);
      if (at < 0) return;
      let next = null;
      if (event.key === "ArrowRight" || event.key === "ArrowUp") next = Math.min(bars.length - 1, at + 1);
      else if (event.key === "ArrowLeft" || event.key === "ArrowDown") next = Math.max(0, at - 1);
      else if (event.key === "Home") next = 0;
      else if (event.key === "End") next = bars.length - 1;
      else if ((event.key === "Enter" || event.key === " ") && spec.activate) {
        event.preventDefault();
        const slot = slots.find((s) => String(s.key) === bars[at].getAttribute("data-period"));
        spec.activate(slot);
        return;
      }
      if (next === null) return;
      event.preventDefault();
      bars[next].focus();
    });

    const total = electricity
      ? t("usageImport", { value: fmtAmount(totals.import, unit) }) + ", " + t("usageExport", { value: fmtAmount(totals.export, unit) })
      : fmtAmount(totals.volume, unit);
    const legend = electricity
      ? [
          el("li", {}, el("span", { class: "swatch import", "aria-hidden": "true" }), t("legendImport")),
          el("li", {}, el("span", { class: "swatch export", "aria-hidden": "true" }), t("legendExport")),
        ]
      : [el("li", {}, el("span", { class: "swatch volume", "aria-hidden": "true" }), t("legendGas"))];
    const columns = electricity ? ["colImport", "colExport"] : ["colVolume"];
    const rows = slots.map((slot) => {
      const period = byKey.get(slot.key);
      const cells = period
        ? amountsOf(period).map((a) => el("td", { class: "num", text: fmtAmount(a.value, unit) }))
        : [el("td", { class: "gap", colspan: columns.length, text: t("usageNoData") })];
      return el("tr", { "data-period": slot.key, class: period ? null : "gap" }, el("th", { scope: "row", text: slot.column }), cells);
    });
    container.replaceChildren(
      el("p", {
        id: summaryId,
        class: "summary",
        text: t("usageSummary", { count: present.length, all: slots.length, gaps: slots.length - present.length, total }),
      }),
      el("p", { id: keysId, class: "visually-hidden", text: t(spec.activate ? "usageKeys" : "usageKeysDay") }),
      el("div", { class: "chart-frame" }, picture),
      el("ul", { class: "legend" }, legend),
      el(
        "details",
        { class: "chart-table" },
        el("summary", { text: t("usageTable") }),
        el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            { "aria-labelledby": spec.headingId },
            el("thead", {}, el("tr", {}, [el("th", { scope: "col", text: t(spec.columnKey) }), ...columns.map((k) => el("th", { scope: "col", text: t(k) }))])),
            el("tbody", {}, rows)
          )
        )
      )
    );
  }

  // ---- confirmation dialog ---------------------------------------------------------------------

  function confirmDialog(title, body, yesText, danger) {
    const dialog = $("#confirm");
    const yes = $("#confirm-yes");
    const no = $("#confirm-no");
    const opener = document.activeElement;
    $("#confirm-title").textContent = title;
    $("#confirm-body").replaceChildren(...body);
    yes.textContent = yesText;
    yes.className = danger ? "danger" : "";
    no.textContent = t("cancel");
    return new Promise((resolve) => {
      const finish = (answer) => {
        yes.onclick = no.onclick = dialog.oncancel = null;
        dialog.close();
        if (!answer && opener && document.contains(opener)) opener.focus();
        resolve(answer);
      };
      yes.onclick = () => finish(true);
      no.onclick = () => finish(false);
      dialog.oncancel = (event) => {
        event.preventDefault(); // Escape: answer "no" through the same path
        finish(false);
      };
      dialog.showModal();
      no.focus(); // the safe choice has the focus
    });
  }

  // ---- export ----------------------------------------------------------------------------------

  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: filename, class: "visually-hidden" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function filenameFrom(resp) {
    const disposition = resp.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/i.exec(disposition);
    if (match) return match[1];
    return "meterpoort-export-" + new Date().toISOString().slice(0, 10) + ".json";
  }

  async function downloadExport() {
    clearError();
    announce(t("loading"));
    try {
      const resp = await request("GET", "v1/me/export");
      const blob = await resp.blob();
      const file = filenameFrom(resp);
      saveBlob(new Blob([blob], { type: "application/json" }), file);
      announce(t("exportDone", { file }));
      // the export is itself in the access log
      state.accessLog = list(await api("GET", "v1/me/access-log"), "entries");
      renderAccessLog();
    } catch (err) {
      announce("");
      handleError(err);
    }
  }

  // ---- start -----------------------------------------------------------------------------------

  function initialLanguage() {
    const stored = localStorage.getItem(LANG_KEY);
    if (stored && LANGS.includes(stored)) return stored;
    const preferred = (navigator.languages && navigator.languages[0]) || navigator.language || "";
    return preferred.toLowerCase().startsWith("nl") ? "nl" : "en";
  }

  function start() {
    state.lang = initialLanguage();
    applyStaticTexts();
    takeTokenFromFragment();

    $("#lang").addEventListener("change", (event) => {
      state.lang = LANGS.includes(event.target.value) ? event.target.value : "en";
      localStorage.setItem(LANG_KEY, state.lang);
      announce(""); // a message in the other language would be stale
      render();
    });
    $("#token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#token").value.trim();
      if (!value) {
        showError(t("tokenEmpty"));
        $("#token").focus();
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, value);
      $("#token").value = "";
      clearError();
      loadAll();
    });
    $("#signout").addEventListener("click", () => {
      signOut();
      clearError();
      announce("");
      $("#token").focus();
    });
    $("#export-button").addEventListener("click", downloadExport);
    window.addEventListener("hashchange", () => {
      if (/[#&]token=/.test(window.location.hash)) {
        takeTokenFromFragment();
        loadAll();
      }
    });
    loadAll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
