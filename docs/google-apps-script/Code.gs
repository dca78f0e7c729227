/**
 * Google Apps Script web app that receives energy-worker's readings (see docs/GUIDE.md,
 * "The Google side").
 *
 * energy-worker calls
 *   GET <web app URL>?function=updateSheet&dataString=279.97,752.04,260.03
 * with each meter's reading in kWh, in meter order. This script appends one row
 *   [time received, meter 1, meter 2, ...]
 * to the sheet "Readings" of the spreadsheet it belongs to, and answers "OK".
 * Anything else is answered with a text starting with "ERROR" and changes nothing.
 *
 * Paste it in Extensions > Apps Script of the spreadsheet, then deploy it as a web app.
 * After every change: Deploy > Manage deployments > Edit > Version: New version > Deploy.
 */

const SHEET_NAME = 'Readings';
const MAX_VALUES = 8; // energy-worker handles at most 8 meters
const NUMBER = /^[0-9]{1,9}(\.[0-9]{1,9})?$/; // e.g. 279.97: digits, a point, decimals

function doGet(e) {
  const params = (e && e.parameter) || {};
  if (params['function'] !== 'updateSheet') {
    return answer('ERROR: function must be updateSheet');
  }
  const data = params['dataString'];
  if (typeof data !== 'string' || data === '') {
    return answer('ERROR: dataString is missing');
  }
  const parts = data.split(',');
  if (parts.length > MAX_VALUES) {
    return answer('ERROR: at most ' + MAX_VALUES + ' values, got ' + parts.length);
  }
  const values = [];
  for (let i = 0; i < parts.length; i++) {
    if (!NUMBER.test(parts[i])) {
      return answer('ERROR: value ' + (i + 1) + ' is not a number like 279.97');
    }
    values.push(Number(parts[i]));
  }

  // Two requests at the same moment must not write the header twice or mix their rows.
  const lock = LockService.getScriptLock();
  if (!lock.tryLock(20000)) {
    return answer('ERROR: the sheet is busy, try again');
  }
  try {
    readingsSheet().appendRow([new Date()].concat(values));
    SpreadsheetApp.flush();
  } finally {
    lock.releaseLock();
  }
  return answer('OK');
}

/** The sheet "Readings", created with a header row when it is missing or empty. */
function readingsSheet() {
  const book = SpreadsheetApp.getActiveSpreadsheet();
  const sheet = book.getSheetByName(SHEET_NAME) || book.insertSheet(SHEET_NAME);
  if (sheet.getLastRow() === 0) {
    const header = ['Received'];
    for (let i = 1; i <= MAX_VALUES; i++) {
      header.push('Meter ' + i);
    }
    sheet.appendRow(header);
    sheet.setFrozenRows(1);
  }
  return sheet;
}

function answer(text) {
  return ContentService.createTextOutput(text).setMimeType(ContentService.MimeType.TEXT);
}

/**
 * Run this once from the editor (select testDoGet, then Run): it asks for the permissions the
 * script needs and writes one test row. Delete that row afterwards.
 */
function testDoGet() {
  const result = doGet({ parameter: { function: 'updateSheet', dataString: '1.00,2.00' } });
  Logger.log(result.getContent());
}
