/**
 * Google Apps Script web app that receives energy-worker's readings (see docs/GUIDE.md,
 * "The Google side").
 *
 * energy-worker calls
 *   GET <web app URL>?function=updateSheet&dataString=279.97,260.03&id=...&day=2024-06-01
 *       &at=2024-06-02T00:00:00+02:00&meters=1,3&name1=House&name3=Boiler
 * with each meter's reading in kWh (dataString), the push's id (the same on every retry), the
 * local day it stands for, the instant of the readings, the meters' numbers in dataString's
 * order and each meter's name. This script appends one row
 *   [time received, day, readings at, push id, one column per meter]
 * to the sheet "Meter readings" of the spreadsheet it belongs to, and answers "OK". Each meter
 * has its own column, headed "Meter <number>: <name>", found by its number (a new meter gets a
 * new column at the right; a renamed one keeps its column and gets the new name). A push whose
 * id is already in the sheet is not written again (a retry after Google's redirect failed):
 * the answer is "OK" too. Anything else is answered with a text starting with "ERROR" and
 * changes nothing.
 *
 * Paste it in Extensions > Apps Script of the spreadsheet, then deploy it as a web app.
 * After every change: Deploy > Manage deployments > Edit > Version: New version > Deploy.
 */

const SHEET_NAME = 'Meter readings';
const FIXED = ['Received', 'Day', 'Readings at', 'Push id']; // the columns before the meters
const ID_COLUMN = 4; // "Push id"
const MAX_VALUES = 8; // energy-worker handles at most 8 meters
const NUMBER = /^[0-9]{1,9}(\.[0-9]{1,9})?$/; // e.g. 279.97: digits, a point, decimals
const METER = /^[1-9][0-9]?$/; // a meter's number, 1 to 99
const ID = /^[A-Za-z0-9:._-]{1,120}$/;
const DAY = /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/;
const INSTANT = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2}|Z)$/;
const HEADER = /^Meter ([0-9]+)(:|$)/; // a meter column's header: "Meter 3: Boiler"
const MAX_NAME = 100;

function doGet(e) {
  const params = (e && e.parameter) || {};
  const push = parse(params);
  if (typeof push === 'string') {
    return answer(push);
  }
  // Two requests at the same moment must not write the header twice, mix their rows, or both
  // miss each other's id.
  const lock = LockService.getScriptLock();
  if (!lock.tryLock(20000)) {
    return answer('ERROR: the sheet is busy, try again');
  }
  try {
    const sheet = readingsSheet();
    if (written(sheet, push.id)) {
      return answer('OK: push ' + push.id + ' was written before');
    }
    const columns = meterColumns(sheet, push.meters, push.names);
    const row = [new Date(), push.day, push.at, push.id];
    while (row.length < sheet.getLastColumn()) {
      row.push('');
    }
    for (let i = 0; i < push.meters.length; i++) {
      row[columns[push.meters[i]] - 1] = push.values[i];
    }
    sheet.appendRow(row);
    SpreadsheetApp.flush();
  } finally {
    lock.releaseLock();
  }
  return answer('OK');
}

/** The request's push, or the text of an ERROR answer. */
function parse(params) {
  if (params['function'] !== 'updateSheet') {
    return 'ERROR: function must be updateSheet';
  }
  const data = params['dataString'];
  if (typeof data !== 'string' || data === '') {
    return 'ERROR: dataString is missing';
  }
  const parts = data.split(',');
  if (parts.length > MAX_VALUES) {
    return 'ERROR: at most ' + MAX_VALUES + ' values, got ' + parts.length;
  }
  const values = [];
  for (let i = 0; i < parts.length; i++) {
    if (!NUMBER.test(parts[i])) {
      return 'ERROR: value ' + (i + 1) + ' is not a number like 279.97';
    }
    values.push(Number(parts[i]));
  }
  const id = params['id'];
  if (typeof id !== 'string' || !ID.test(id)) {
    return 'ERROR: id is missing or not an id (energy-worker older than this script?)';
  }
  const day = params['day'];
  if (typeof day !== 'string' || !DAY.test(day)) {
    return 'ERROR: day is missing or not a day like 2024-06-01';
  }
  const at = params['at'];
  if (typeof at !== 'string' || !INSTANT.test(at) || isNaN(new Date(at).getTime())) {
    return 'ERROR: at is missing or not a time like 2024-06-02T00:00:00+02:00';
  }
  const meters = String(params['meters'] || '').split(',');
  if (meters.length !== values.length) {
    return 'ERROR: meters must name the meter of each of the ' + values.length + ' values';
  }
  const names = {};
  for (let i = 0; i < meters.length; i++) {
    if (!METER.test(meters[i])) {
      return 'ERROR: meters must be meter numbers, 1 to 99';
    }
    if (meters.indexOf(meters[i]) !== i) {
      return 'ERROR: meter ' + meters[i] + ' is named twice';
    }
    // A name is text in a header: control characters go, and it has a bounded length.
    const name = String(params['name' + meters[i]] || '').replace(/[\u0000-\u001f\u007f]/g, '');
    names[meters[i]] = name.slice(0, MAX_NAME);
  }
  return { id: id, day: day, at: new Date(at), values: values, meters: meters, names: names };
}

/** The sheet "Meter readings", created with its header row when it is missing or empty. */
function readingsSheet() {
  const book = SpreadsheetApp.getActiveSpreadsheet();
  const sheet = book.getSheetByName(SHEET_NAME) || book.insertSheet(SHEET_NAME);
  if (sheet.getLastRow() === 0) {
    sheet.appendRow(FIXED);
    sheet.setFrozenRows(1);
  }
  return sheet;
}

/** True if a row with this push id is in the sheet. */
function written(sheet, id) {
  const rows = sheet.getLastRow() - 1;
  if (rows < 1) {
    return false;
  }
  const ids = sheet.getRange(2, ID_COLUMN, rows, 1).getValues();
  for (let i = ids.length - 1; i >= 0; i--) { // the newest first: a retry is recent
    if (String(ids[i][0]) === id) {
      return true;
    }
  }
  return false;
}

/** Each meter's column (1-based), by its number in the header; new meters get a new column,
 * a header with an old name gets the new one. */
function meterColumns(sheet, meters, names) {
  const width = Math.max(sheet.getLastColumn(), FIXED.length);
  const header = sheet.getRange(1, 1, 1, width).getValues()[0];
  const columns = {};
  for (let c = FIXED.length; c < header.length; c++) {
    const found = HEADER.exec(String(header[c]));
    if (found && !(found[1] in columns)) {
      columns[found[1]] = c + 1;
    }
  }
  let next = header.length + 1;
  for (let i = 0; i < meters.length; i++) {
    const title = 'Meter ' + meters[i] + (names[meters[i]] ? ': ' + names[meters[i]] : '');
    if (!(meters[i] in columns)) {
      columns[meters[i]] = next++;
      sheet.getRange(1, columns[meters[i]]).setValue(title);
    } else if (names[meters[i]] && header[columns[meters[i]] - 1] !== title) {
      sheet.getRange(1, columns[meters[i]]).setValue(title);
    }
  }
  return columns;
}

function answer(text) {
  return ContentService.createTextOutput(text).setMimeType(ContentService.MimeType.TEXT);
}

/**
 * Run this once from the editor (select testDoGet, then Run): it asks for the permissions the
 * script needs and writes one test row. Delete that row afterwards.
 */
function testDoGet() {
  const result = doGet({
    parameter: {
      function: 'updateSheet', dataString: '1.00,2.00', id: 'test:' + new Date().getTime(),
      day: '2024-06-01', at: '2024-06-02T00:00:00+02:00', meters: '1,2', name1: 'Test',
    },
  });
  Logger.log(result.getContent());
}
