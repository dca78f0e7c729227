// Google's services as docs/google-apps-script/Code.gs uses them, in memory, for the tests
// (tests/sheet_server.py runs the script itself on them, in V8). Only what the script calls.

const fake = { lockBusy: false, book: {} };

class FakeRange {
  constructor(sheet, row, column, rows, columns) {
    Object.assign(this, { sheet, row, column, rows, columns });
  }
  getValues() {
    const out = [];
    for (let r = 0; r < this.rows; r++) {
      const line = this.sheet.cells[this.row - 1 + r] || [];
      const values = [];
      for (let c = 0; c < this.columns; c++) {
        const value = line[this.column - 1 + c];
        values.push(value === undefined ? '' : value);
      }
      out.push(values);
    }
    return out;
  }
  setValue(value) {
    while (this.sheet.cells.length < this.row) {
      this.sheet.cells.push([]);
    }
    const line = this.sheet.cells[this.row - 1];
    while (line.length < this.column - 1) {
      line.push('');
    }
    line[this.column - 1] = value;
    return this;
  }
}

class FakeSheet {
  constructor(name) {
    this.name = name;
    this.cells = [];
    this.frozen = 0;
  }
  getName() {
    return this.name;
  }
  getLastRow() {
    return this.cells.length;
  }
  getLastColumn() {
    return this.cells.reduce((most, line) => Math.max(most, line.length), 0);
  }
  appendRow(values) {
    this.cells.push(values.slice());
    return this;
  }
  getRange(row, column, rows, columns) {
    return new FakeRange(this, row, column, rows || 1, columns || 1);
  }
  setFrozenRows(rows) {
    this.frozen = rows;
  }
}

const SpreadsheetApp = {
  getActiveSpreadsheet() {
    return {
      getSheetByName: (name) => fake.book[name] || null,
      insertSheet: (name) => (fake.book[name] = new FakeSheet(name)),
    };
  },
  flush() {},
};

const LockService = {
  getScriptLock() {
    return { tryLock: () => !fake.lockBusy, releaseLock() {} };
  },
};

const ContentService = {
  MimeType: { TEXT: 'text/plain' },
  createTextOutput(text) {
    return {
      setMimeType() {
        return this;
      },
      getContent: () => text,
    };
  },
};

const Logger = { log() {} };

// What the tests call: a request's parameters in, the script's answer out; a sheet's cells
// (dates as ISO text); a busy lock.
function fakeGet(parameter) {
  return doGet({ parameter: parameter }).getContent();
}

function fakeCells(name) {
  const sheet = fake.book[name];
  return sheet ? JSON.stringify(sheet.cells) : null;
}

function fakeLockBusy(busy) {
  fake.lockBusy = busy;
  return busy;
}
